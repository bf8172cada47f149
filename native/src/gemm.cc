#include <napi.h>
void RegisterGemm(Napi::Env, Napi::Object) {}
