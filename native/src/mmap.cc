// mmapFile(path: string): ArrayBuffer — maps a file read-only (PROT_READ, MAP_PRIVATE) and returns an
// external ArrayBuffer over the mapping; the buffer's finalizer munmaps it once the GC collects it.
//
// The memory is READ-ONLY: writing through any view of the buffer raises SIGSEGV and kills the process.
// Truncating the file while it is mapped makes later reads raise SIGBUS. Callers that need writable data
// copy it (readSafetensors(path, {copy: true})).
#include <napi.h>

#include <cerrno>
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

Napi::Value MmapFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "mmapFile(path: string): path must be a string").ThrowAsJavaScriptException();
    return env.Undefined();
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
  size_t length = static_cast<size_t>(st.st_size);
  if (length == 0) {  // mmap of 0 bytes is EINVAL; an empty file is an empty buffer
    close(fd);
    return Napi::ArrayBuffer::New(env, 0);
  }
  void* addr = mmap(nullptr, length, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  close(fd);  // the mapping keeps the file referenced
  if (addr == MAP_FAILED) return Fail(env, path, "mmap", err);
  auto* m = new Mapping{addr, length};
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, addr, length, Unmap, m);
  if (env.IsExceptionPending() || ab.IsEmpty()) {  // e.g. a runtime that forbids external buffers
    munmap(addr, length);
    delete m;
    return env.Undefined();
  }
  return ab;
}

}  // namespace

void RegisterMmap(Napi::Env env, Napi::Object exports) {
  exports.Set("mmapFile", Napi::Function::New(env, MmapFile, "mmapFile"));
}
