{
  "targets": [
    {
      "target_name": "vfio_user_native",
      "sources": ["native/vfio_user_native.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-O2"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"]
    }
  ]
}
