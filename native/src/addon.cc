// Entry point of the ajuste native addon. Each kernel family lives in its own file and registers
// its functions here; the JS side (src/kernels/native/index.ts) overlays whatever is exported on
// the js kernels, under the same names and signatures as src/kernels/backend.ts.
#include <napi.h>
#include "threads.h"

void RegisterGemm(Napi::Env env, Napi::Object exports);       // gemm.cc
void RegisterGemv(Napi::Env env, Napi::Object exports);       // gemv.cc
void RegisterAttention(Napi::Env env, Napi::Object exports);  // attention.cc
void RegisterDecodeAttention(Napi::Env env, Napi::Object exports);  // decode_attention.cc
void RegisterMmap(Napi::Env env, Napi::Object exports);       // mmap.cc
void RegisterNf4(Napi::Env env, Napi::Object exports);        // nf4.cc
void RegisterPointwise(Napi::Env env, Napi::Object exports);  // pointwise.cc
void RegisterSkinny(Napi::Env env, Napi::Object exports);     // skinny.cc

static Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("version", 1);
  o.Set("threads", ajuste::ThreadPool::get().size());
  return o;
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("info", Napi::Function::New(env, Info));
  RegisterGemm(env, exports);
  RegisterGemv(env, exports);
  RegisterAttention(env, exports);
  RegisterDecodeAttention(env, exports);
  RegisterMmap(env, exports);
  RegisterNf4(env, exports);
  RegisterPointwise(env, exports);
  RegisterSkinny(env, exports);
  return exports;
}

NODE_API_MODULE(ajuste_native, Init)
