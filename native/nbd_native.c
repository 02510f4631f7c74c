/*
 * Small system calls Node does not expose: fallocate (punch holes, zero
 * ranges), lseek SEEK_DATA/SEEK_HOLE (block status), and preadv2 with
 * RWF_NOWAIT, which lets the event loop serve page-cache hits without a
 * thread-pool hop and fall back to the pool only when the call would block.
 *
 * Every function returns a negative errno instead of throwing, so the
 * TypeScript side maps errors to BlockError values in one place.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

#define CHECK(call)                                                           \
  do {                                                                        \
    if ((call) != napi_ok) {                                                  \
      napi_throw_error(env, NULL, "nbd_native: bad arguments: " #call);      \
      return NULL;                                                            \
    }                                                                         \
  } while (0)

static napi_value make_number(napi_env env, double value) {
  napi_value result;
  napi_create_double(env, value, &result);
  return result;
}

static int get_i64(napi_env env, napi_value value, int64_t *out) {
  return napi_get_value_int64(env, value, out) == napi_ok;
}

/* fallocate(fd, mode, offset, length) -> 0 or -errno */
static napi_value js_fallocate(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  int64_t fd, mode, offset, length;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 4 || !get_i64(env, argv[0], &fd) || !get_i64(env, argv[1], &mode) ||
      !get_i64(env, argv[2], &offset) || !get_i64(env, argv[3], &length)) {
    napi_throw_type_error(env, NULL, "fallocate(fd, mode, offset, length)");
    return NULL;
  }
  int rc;
  do {
    rc = fallocate((int)fd, (int)mode, (off_t)offset, (off_t)length);
  } while (rc < 0 && errno == EINTR);
  return make_number(env, rc < 0 ? -errno : 0);
}

/* seek(fd, offset, whence) -> new offset or -errno (whence: 2 end, 3 data, 4 hole) */
static napi_value js_seek(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int64_t fd, offset, whence;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 3 || !get_i64(env, argv[0], &fd) || !get_i64(env, argv[1], &offset) ||
      !get_i64(env, argv[2], &whence) || (whence != SEEK_DATA && whence != SEEK_HOLE && whence != SEEK_END)) {
    napi_throw_type_error(env, NULL, "seek(fd, offset, SEEK_END|SEEK_DATA|SEEK_HOLE)");
    return NULL;
  }
  off_t rc = lseek((int)fd, (off_t)offset, (int)whence);
  return make_number(env, rc < 0 ? -errno : (double)rc);
}

/* Shared argument parsing of (fd, buffer, position) for the NOWAIT calls. */
static int io_args(napi_env env, napi_callback_info info, int64_t *fd, void **data,
                   size_t *length, int64_t *position) {
  size_t argc = 3;
  napi_value argv[3];
  bool is_buffer = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3) return 0;
  if (napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer) return 0;
  if (napi_get_buffer_info(env, argv[1], data, length) != napi_ok) return 0;
  return get_i64(env, argv[0], fd) && get_i64(env, argv[2], position) && *position >= 0;
}

/*
 * preadNoWait(fd, buffer, position) -> bytes read, or -errno. -EAGAIN means
 * some of the range is not in the page cache; the caller retries on a thread.
 */
static napi_value js_pread_nowait(napi_env env, napi_callback_info info) {
  int64_t fd, position;
  void *data;
  size_t length;
  if (!io_args(env, info, &fd, &data, &length, &position)) {
    napi_throw_type_error(env, NULL, "preadNoWait(fd, buffer, position)");
    return NULL;
  }
  struct iovec iov = {.iov_base = data, .iov_len = length};
  ssize_t rc;
  do {
    rc = preadv2((int)fd, &iov, 1, (off_t)position, RWF_NOWAIT);
  } while (rc < 0 && errno == EINTR);
  return make_number(env, rc < 0 ? -errno : (double)rc);
}

/*
 * fallocateAsync(fd, mode, offset, length, callback(result)) runs on the
 * libuv thread pool: punching or zeroing gigabytes (one TRIM of a whole
 * export) can take milliseconds, too long to block the event loop.
 */
typedef struct {
  napi_async_work work;
  napi_ref callback;
  int fd, mode;
  off_t offset, length;
  int result;
} fallocate_job;

static void fallocate_execute(napi_env env, void *data) {
  (void)env;
  fallocate_job *job = data;
  int rc;
  do {
    rc = fallocate(job->fd, job->mode, job->offset, job->length);
  } while (rc < 0 && errno == EINTR);
  job->result = rc < 0 ? -errno : 0;
}

static void fallocate_complete(napi_env env, napi_status status, void *data) {
  fallocate_job *job = data;
  napi_value callback, global, argv[1];
  napi_get_reference_value(env, job->callback, &callback);
  napi_get_global(env, &global);
  argv[0] = make_number(env, status == napi_ok ? job->result : -ECANCELED);
  napi_call_function(env, global, callback, 1, argv, NULL);
  napi_delete_reference(env, job->callback);
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value js_fallocate_async(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], name;
  int64_t fd, mode, offset, length;
  napi_valuetype type;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 5 || !get_i64(env, argv[0], &fd) || !get_i64(env, argv[1], &mode) ||
      !get_i64(env, argv[2], &offset) || !get_i64(env, argv[3], &length) ||
      napi_typeof(env, argv[4], &type) != napi_ok || type != napi_function) {
    napi_throw_type_error(env, NULL, "fallocateAsync(fd, mode, offset, length, callback)");
    return NULL;
  }
  fallocate_job *job = calloc(1, sizeof(*job));
  if (job == NULL) {
    napi_throw_error(env, NULL, "fallocateAsync: out of memory");
    return NULL;
  }
  job->fd = (int)fd;
  job->mode = (int)mode;
  job->offset = (off_t)offset;
  job->length = (off_t)length;
  CHECK(napi_create_reference(env, argv[4], 1, &job->callback));
  CHECK(napi_create_string_utf8(env, "nbd-mirror:fallocate", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(env, NULL, name, fallocate_execute, fallocate_complete, job, &job->work));
  CHECK(napi_queue_async_work(env, job->work));
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"fallocate", NULL, js_fallocate, NULL, NULL, NULL, napi_default, NULL},
      {"fallocateAsync", NULL, js_fallocate_async, NULL, NULL, NULL, napi_default, NULL},
      {"seek", NULL, js_seek, NULL, NULL, NULL, napi_default, NULL},
      {"preadNoWait", NULL, js_pread_nowait, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(properties) / sizeof(properties[0]), properties);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
