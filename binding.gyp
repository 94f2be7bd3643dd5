{
  "targets": [
    {
      "target_name": "vfio_user_native",
      "sources": [
        "native/addon.c",
        "native/common.c",
        "native/fd.c",
        "native/memory.c",
        "native/poller.c",
        "native/socket.c"
      ],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-O2", "-fvisibility=hidden"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"]
    }
  ]
}
