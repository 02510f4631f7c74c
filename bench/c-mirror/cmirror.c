/*
 * The C reference for `npm run bench`: a two-leg RAID1 as an nbdkit plugin,
 * the least a mirror must do and nothing more (no log, no resync, no cache).
 * Reads alternate between the legs; a write goes to both legs, one after
 * the other, on nbdkit's worker thread; flush is fdatasync of both. nbdkit
 * runs requests in parallel on its thread pool, as our server overlaps them.
 *
 *   nbdkit ./cmirror.so leg0=A.img leg1=B.img
 */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static char *leg_paths[2];
static int leg_fds[2] = { -1, -1 };
static int64_t size_bytes;
static unsigned read_turn;

static int cmirror_config(const char *key, const char *value) {
  int slot = strcmp(key, "leg0") == 0 ? 0 : strcmp(key, "leg1") == 0 ? 1 : -1;
  if (slot < 0) {
    nbdkit_error("unknown parameter '%s' (expected leg0=FILE leg1=FILE)", key);
    return -1;
  }
  free(leg_paths[slot]);
  leg_paths[slot] = nbdkit_realpath(value);
  return leg_paths[slot] == NULL ? -1 : 0;
}

static int cmirror_get_ready(void) {
  for (int slot = 0; slot < 2; slot++) {
    struct stat st;
    if (leg_paths[slot] == NULL) {
      nbdkit_error("leg%d=FILE is required", slot);
      return -1;
    }
    leg_fds[slot] = open(leg_paths[slot], O_RDWR | O_CLOEXEC);
    if (leg_fds[slot] < 0 || fstat(leg_fds[slot], &st) < 0) {
      nbdkit_error("%s: %m", leg_paths[slot]);
      return -1;
    }
    if (slot == 0 || st.st_size < size_bytes) size_bytes = st.st_size;
  }
  return 0;
}

static void cmirror_unload(void) {
  for (int slot = 0; slot < 2; slot++) {
    if (leg_fds[slot] >= 0) close(leg_fds[slot]);
    free(leg_paths[slot]);
  }
}

static void *cmirror_open(int readonly) {
  (void)readonly;
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t cmirror_get_size(void *handle) {
  (void)handle;
  return size_bytes;
}

static int cmirror_can_multi_conn(void *handle) {
  (void)handle;
  return 1;
}

static int cmirror_can_fua(void *handle) {
  (void)handle;
  return NBDKIT_FUA_EMULATE;
}

static int cmirror_pread(void *handle, void *buf, uint32_t count, uint64_t offset, uint32_t flags) {
  (void)handle; (void)flags;
  int fd = leg_fds[__atomic_fetch_add(&read_turn, 1, __ATOMIC_RELAXED) & 1];
  for (uint32_t done = 0; done < count;) {
    ssize_t got = pread(fd, (char *)buf + done, count - done, offset + done);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      nbdkit_error("pread: %m");
      if (got == 0) errno = EIO;
      return -1;
    }
    done += got;
  }
  return 0;
}

static int cmirror_pwrite(void *handle, const void *buf, uint32_t count, uint64_t offset, uint32_t flags) {
  (void)handle; (void)flags;
  for (int slot = 0; slot < 2; slot++) {
    for (uint32_t done = 0; done < count;) {
      ssize_t put = pwrite(leg_fds[slot], (const char *)buf + done, count - done, offset + done);
      if (put < 0 && errno == EINTR) continue;
      if (put < 0) {
        nbdkit_error("pwrite leg%d: %m", slot);
        return -1;
      }
      done += put;
    }
  }
  return 0;
}

static int cmirror_flush(void *handle, uint32_t flags) {
  (void)handle; (void)flags;
  for (int slot = 0; slot < 2; slot++) {
    if (fdatasync(leg_fds[slot]) < 0) {
      nbdkit_error("fdatasync leg%d: %m", slot);
      return -1;
    }
  }
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name = "cmirror",
  .longname = "two-leg RAID1 reference for nbd-mirror's benchmark",
  .version = "1.0",
  .config = cmirror_config,
  .config_help = "leg0=FILE leg1=FILE  the two legs (same size)",
  .get_ready = cmirror_get_ready,
  .unload = cmirror_unload,
  .open = cmirror_open,
  .get_size = cmirror_get_size,
  .can_multi_conn = cmirror_can_multi_conn,
  .can_fua = cmirror_can_fua,
  .pread = cmirror_pread,
  .pwrite = cmirror_pwrite,
  .flush = cmirror_flush,
};

NBDKIT_REGISTER_PLUGIN(plugin)
