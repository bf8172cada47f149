{
  "targets": [
    {
      "target_name": "ajuste_native",
      "sources": [ "<!@(node -e \"console.log(require('fs').readdirSync('native/src').filter(f=>f.endsWith('.cc')).map(f=>'native/src/'+f).join(' '))\")" ],
      "include_dirs": [ "<!(node -p \"require('node-addon-api').include_dir\")" ],
      "defines": [ "NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS" ],
      "cflags!": [ "-fno-exceptions" ],
      "cflags_cc!": [ "-fno-exceptions" ],
      "cflags_cc": [ "-O3", "-std=c++17", "-fno-math-errno", "-pthread" ],
      "ldflags": [ "-pthread" ]
    }
  ]
}
