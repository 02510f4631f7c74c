{
  "targets": [
    {
      "target_name": "nbd_native",
      "sources": ["nbd_native.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
