#include <napi.h>
void RegisterAttention(Napi::Env, Napi::Object) {}
