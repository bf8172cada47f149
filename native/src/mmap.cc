#include <napi.h>
void RegisterMmap(Napi::Env, Napi::Object) {}
