// mmapFile(path: string, offset?: number, length?: number): ArrayBuffer — maps a file (or the byte range
// [offset, offset + length) of it) read-only (PROT_READ, MAP_PRIVATE) and returns an external ArrayBuffer
// over the mapping; the buffer's finalizer munmaps it once the GC collects it.
// One buffer is at most 2^32 bytes (Node 20's limit for external buffers; above it Node frees the data
// itself and fails, so we refuse first); map bigger files range by range.
//
// The memory is READ-ONLY: writing through any view of the buffer raises SIGSEGV and kills the process.
// Truncating the file while it is mapped makes later reads raise SIGBUS. Callers that need writable data
// copy it (readSafetensors(path, {copy: true})).
#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

struct Mapping {
  void* addr;
  size_t length;
};

Napi::Value Fail(Napi::Env env, const std::string& path, const char* what, int err) {
  std::string msg = "mmapFile: cannot " + std::string(what) + " " + path + ": " + std::strerror(err);
  Napi::Error::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

void Unmap(Napi::Env /*env*/, void* /*data*/, Mapping* m) {
  munmap(m->addr, m->length);
  delete m;
}

constexpr uint64_t kMaxBuffer = uint64_t(1) << 32;

Napi::Value MmapFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "mmapFile(path: string, offset?: number, length?: number): path must be a string").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  bool ranged = info.Length() >= 2 && !info[1].IsUndefined();
  double offD = 0, lenD = -1;
  if (ranged) {
    if (!info[1].IsNumber() || info.Length() < 3 || !info[2].IsNumber()) {
      Napi::TypeError::New(env, "mmapFile(path, offset, length): offset and length must be numbers").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    offD = info[1].As<Napi::Number>().DoubleValue();
    lenD = info[2].As<Napi::Number>().DoubleValue();
    if (!(offD >= 0) || !(lenD >= 0) || offD != static_cast<double>(static_cast<uint64_t>(offD)) ||
        lenD != static_cast<double>(static_cast<uint64_t>(lenD)) || offD > 9007199254740991.0 || lenD > 9007199254740991.0) {
      Napi::RangeError::New(env, "mmapFile: offset and length must be non-negative integers").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Fail(env, path, "open", errno);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return Fail(env, path, "stat", err);
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    Napi::Error::New(env, "mmapFile: " + path + " is not a regular file").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint64_t fileSize = static_cast<uint64_t>(st.st_size);
  uint64_t offset = static_cast<uint64_t>(offD);
  uint64_t length = ranged ? static_cast<uint64_t>(lenD) : fileSize;
  if (offset > fileSize || length > fileSize - offset) {
    close(fd);
    Napi::RangeError::New(env, "mmapFile: bytes " + std::to_string(offset) + ".." + std::to_string(offset + length) + " are past the end of " +
                                   path + " (" + std::to_string(fileSize) + " bytes)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (length > kMaxBuffer) {
    close(fd);
    Napi::RangeError::New(env, "mmapFile: " + path + ": " + std::to_string(length) +
                                   " bytes is more than one ArrayBuffer can hold (2^32); map it in ranges")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (length == 0) {  // mmap of 0 bytes is EINVAL; an empty range is an empty buffer
    close(fd);
    return Napi::ArrayBuffer::New(env, 0);
  }
  uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  uint64_t start = offset - offset % page;  // mmap offsets must be page-aligned
  size_t mapLength = static_cast<size_t>(length + (offset - start));
  void* addr = mmap(nullptr, mapLength, PROT_READ, MAP_PRIVATE, fd, static_cast<off_t>(start));
  int err = errno;
  close(fd);  // the mapping keeps the file referenced
  if (addr == MAP_FAILED) return Fail(env, path, "mmap", err);
  auto* m = new Mapping{addr, mapLength};
  char* data = static_cast<char*>(addr) + (offset - start);
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, data, static_cast<size_t>(length), Unmap, m);
  if (env.IsExceptionPending() || ab.IsEmpty()) {  // e.g. a runtime that forbids external buffers
    munmap(addr, mapLength);
    delete m;
    return env.Undefined();
  }
  return ab;
}

}  // namespace

void RegisterMmap(Napi::Env env, Napi::Object exports) {
  exports.Set("mmapFile", Napi::Function::New(env, MmapFile, "mmapFile"));
}
