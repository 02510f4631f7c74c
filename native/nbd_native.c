/*
 * Small system calls Node does not expose: fallocate (punch holes, zero
 * ranges), lseek SEEK_DATA/SEEK_HOLE (block status), preadv2 with
 * RWF_NOWAIT, which lets the event loop serve page-cache hits without a
 * thread-pool hop and fall back to the pool only when the call would block,
 * sendfile for large read replies (see sendFileAsync), and whole-file OFD
 * locks that keep a second process off storage a server writes.
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
#include <stdio.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
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

typedef ssize_t (*positional_op)(int fd, void *data, size_t length, off_t position);

/* Calls op on (fd, buffer, position) from JS, retrying on EINTR: bytes transferred or -errno. */
static napi_value positional_io(napi_env env, napi_callback_info info, const char *usage, positional_op op) {
  int64_t fd, position;
  void *data;
  size_t length;
  if (!io_args(env, info, &fd, &data, &length, &position)) {
    napi_throw_type_error(env, NULL, usage);
    return NULL;
  }
  ssize_t rc;
  do {
    rc = op((int)fd, data, length, (off_t)position);
  } while (rc < 0 && errno == EINTR);
  return make_number(env, rc < 0 ? -errno : (double)rc);
}

static ssize_t pread_nowait(int fd, void *data, size_t length, off_t position) {
  struct iovec iov = {.iov_base = data, .iov_len = length};
  return preadv2(fd, &iov, 1, position, RWF_NOWAIT);
}

static ssize_t pwrite_plain(int fd, void *data, size_t length, off_t position) {
  return pwrite(fd, data, length, position);
}

/*
 * preadNoWait(fd, buffer, position) -> bytes read, or -errno. -EAGAIN means
 * some of the range is not in the page cache; the caller retries on a thread.
 */
static napi_value js_pread_nowait(napi_env env, napi_callback_info info) {
  return positional_io(env, info, "preadNoWait(fd, buffer, position)", pread_nowait);
}

/*
 * pwriteSync(fd, buffer, position) -> bytes written, or -errno. The same
 * system call as fs.writeSync without its argument checks and error object:
 * a 4k write into the page cache costs little more than the call around it.
 */
static napi_value js_pwrite_sync(napi_env env, napi_callback_info info) {
  return positional_io(env, info, "pwriteSync(fd, buffer, position)", pwrite_plain);
}

/* The start of every thread-pool job: its libuv work and the JS callback to call when done. */
typedef struct {
  napi_async_work work;
  napi_ref callback;
} async_job;

static bool is_function(napi_env env, napi_value value) {
  napi_valuetype type;
  return napi_typeof(env, value, &type) == napi_ok && type == napi_function;
}

/* A zeroed job of `size` bytes (a struct that begins with an async_job); NULL after throwing. */
static void *new_job(napi_env env, size_t size, const char *call) {
  void *job = calloc(1, size);
  if (job == NULL) {
    char message[64];
    snprintf(message, sizeof(message), "%s: out of memory", call);
    napi_throw_error(env, NULL, message);
  }
  return job;
}

/*
 * Queues a job made by new_job to run `execute` on the thread pool. If it
 * cannot be queued, whatever was set up is undone, the job freed and an
 * error thrown (the caller just returns).
 */
static void queue_job(napi_env env, async_job *job, napi_value callback, const char *name,
                      napi_async_execute_callback execute, napi_async_complete_callback complete) {
  napi_value resource_name;
  napi_status status = napi_create_reference(env, callback, 1, &job->callback);
  if (status == napi_ok) status = napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource_name);
  if (status == napi_ok) status = napi_create_async_work(env, NULL, resource_name, execute, complete, job, &job->work);
  if (status == napi_ok) status = napi_queue_async_work(env, job->work);
  if (status == napi_ok) return;
  if (job->work != NULL) napi_delete_async_work(env, job->work);
  if (job->callback != NULL) napi_delete_reference(env, job->callback);
  free(job);
  napi_throw_error(env, NULL, "nbd_native: cannot queue a thread-pool job");
}

/* Calls the job's callback with these arguments, then frees the job. */
static void finish_job(napi_env env, async_job *job, size_t argc, napi_value *argv) {
  napi_value callback, global;
  napi_get_reference_value(env, job->callback, &callback);
  napi_get_global(env, &global);
  napi_call_function(env, global, callback, argc, argv, NULL);
  napi_delete_reference(env, job->callback);
  napi_delete_async_work(env, job->work);
  free(job);
}

/*
 * fallocateAsync(fd, mode, offset, length, callback(result)) runs on the
 * libuv thread pool: punching or zeroing gigabytes (one TRIM of a whole
 * export) can take milliseconds, too long to block the event loop.
 */
typedef struct {
  async_job async;
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
  napi_value argv[1] = {make_number(env, status == napi_ok ? job->result : -ECANCELED)};
  finish_job(env, &job->async, 1, argv);
}

static napi_value js_fallocate_async(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  int64_t fd, mode, offset, length;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 5 || !get_i64(env, argv[0], &fd) || !get_i64(env, argv[1], &mode) ||
      !get_i64(env, argv[2], &offset) || !get_i64(env, argv[3], &length) || !is_function(env, argv[4])) {
    napi_throw_type_error(env, NULL, "fallocateAsync(fd, mode, offset, length, callback)");
    return NULL;
  }
  fallocate_job *job = new_job(env, sizeof(*job), "fallocateAsync");
  if (job == NULL) return NULL;
  job->fd = (int)fd;
  job->mode = (int)mode;
  job->offset = (off_t)offset;
  job->length = (off_t)length;
  queue_job(env, &job->async, argv[4], "nbd-mirror:fallocate", fallocate_execute, fallocate_complete);
  return NULL;
}

/* The one argument of a call taking a descriptor; false after throwing `usage` as a type error. */
static bool single_fd_arg(napi_env env, napi_callback_info info, int64_t *fd, const char *usage) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc == 1 && get_i64(env, argv[0], fd)) return true;
  napi_throw_type_error(env, NULL, usage);
  return false;
}

/* dup(fd) -> a new close-on-exec descriptor for the same open file, or -errno */
static napi_value js_dup(napi_env env, napi_callback_info info) {
  int64_t fd;
  if (!single_fd_arg(env, info, &fd, "dup(fd)")) return NULL;
  int rc = fcntl((int)fd, F_DUPFD_CLOEXEC, 0);
  return make_number(env, rc < 0 ? -errno : rc);
}

/* shutdownSocket(fd) -> 0 or -errno: both directions, which wakes a sender blocked in poll */
static napi_value js_shutdown_socket(napi_env env, napi_callback_info info) {
  int64_t fd;
  if (!single_fd_arg(env, info, &fd, "shutdownSocket(fd)")) return NULL;
  int rc = shutdown((int)fd, SHUT_RDWR);
  return make_number(env, rc < 0 ? -errno : 0);
}

/*
 * Whole-file open-file-description locks (F_OFD_SETLK): owned by the open
 * file, not the process, so closing another descriptor of the same file
 * does not drop them (as it would a POSIX lock), and the kernel drops them
 * when the process dies, kill -9 included: nothing goes stale.
 */
static bool fd_and_flag_args(napi_env env, napi_callback_info info, int64_t *fd, bool *flag, const char *usage) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc == 2 && get_i64(env, argv[0], fd) &&
      napi_get_value_bool(env, argv[1], flag) == napi_ok) return true;
  napi_throw_type_error(env, NULL, usage);
  return false;
}

/* lockFile(fd, exclusive) -> 0, or -errno (-EAGAIN: another open file holds a conflicting lock) */
static napi_value js_lock_file(napi_env env, napi_callback_info info) {
  int64_t fd;
  bool exclusive;
  if (!fd_and_flag_args(env, info, &fd, &exclusive, "lockFile(fd, exclusive)")) return NULL;
  struct flock lock = {.l_type = exclusive ? F_WRLCK : F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0, .l_pid = 0};
  int rc = fcntl((int)fd, F_OFD_SETLK, &lock);
  return make_number(env, rc < 0 ? (errno == EACCES ? -EAGAIN : -errno) : 0);
}

/* lockHolder(fd) -> 0 when no other open file locks it, 1 when one holds it shared, 2 exclusive; or -errno */
static napi_value js_lock_holder(napi_env env, napi_callback_info info) {
  int64_t fd;
  if (!single_fd_arg(env, info, &fd, "lockHolder(fd)")) return NULL;
  struct flock lock = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0, .l_pid = 0};
  if (fcntl((int)fd, F_OFD_GETLK, &lock) < 0) return make_number(env, -errno);
  return make_number(env, lock.l_type == F_UNLCK ? 0 : lock.l_type == F_RDLCK ? 1 : 2);
}

/*
 * sendFileAsync(socketFd, header, fileFd, position, length, stallMs,
 * callback(result, sentBytes)) sends one read reply on the thread pool: the
 * reply header, then `length` bytes of the file from `position` by
 * sendfile, which hands the kernel references to page-cache pages instead
 * of copying them twice (into a reply buffer, then into the socket). Bytes
 * past the end of the file are sent as zeroes, as a read would return them.
 *
 * The socket is non-blocking. When it stays full for `stallMs` (the client
 * is not reading), the job returns -EAGAIN with what it sent, so a slow
 * client never holds a pool thread; the caller sends the rest another way.
 * result: 0 when all was sent, else -errno; sentBytes counts header+data.
 */
#define REPLY_HEADER_MAX 64

typedef struct {
  async_job async;
  int socket_fd, file_fd;
  unsigned char header[REPLY_HEADER_MAX];
  size_t header_bytes;
  off_t position;
  uint64_t length, sent, stall_ms;
  int result;
} send_file_job;

static const unsigned char zero_block[65536];

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void send_file_execute(napi_env env, void *data) {
  (void)env;
  send_file_job *job = data;
  uint64_t total = job->header_bytes + job->length;
  int file_ended = 0;
  int64_t stalled_since = -1;
  job->result = 0;
  while (job->sent < total) {
    ssize_t rc;
    if (job->sent < job->header_bytes) {
      rc = send(job->socket_fd, job->header + job->sent, job->header_bytes - job->sent, MSG_NOSIGNAL | MSG_MORE);
    } else if (!file_ended) {
      uint64_t done = job->sent - job->header_bytes;
      off_t offset = job->position + (off_t)done;
      uint64_t chunk = job->length - done;
      if (chunk > (1u << 30)) chunk = 1u << 30;
      rc = sendfile(job->socket_fd, job->file_fd, &offset, chunk);
      if (rc == 0) {
        file_ended = 1;
        continue;
      }
    } else {
      uint64_t chunk = total - job->sent;
      if (chunk > sizeof(zero_block)) chunk = sizeof(zero_block);
      rc = send(job->socket_fd, zero_block, chunk, MSG_NOSIGNAL);
    }
    if (rc > 0) {
      job->sent += (uint64_t)rc;
      stalled_since = -1;
      continue;
    }
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0 && errno != EAGAIN) {
      job->result = -errno;
      return;
    }
    int64_t now = now_ms();
    if (stalled_since < 0) stalled_since = now;
    int64_t left = (int64_t)job->stall_ms - (now - stalled_since);
    if (left <= 0) {
      job->result = -EAGAIN;
      return;
    }
    struct pollfd pfd = {.fd = job->socket_fd, .events = POLLOUT};
    if (poll(&pfd, 1, (int)left) < 0 && errno != EINTR) {
      job->result = -errno;
      return;
    }
  }
}

static void send_file_complete(napi_env env, napi_status status, void *data) {
  send_file_job *job = data;
  napi_value argv[2] = {make_number(env, status == napi_ok ? job->result : -ECANCELED),
                        make_number(env, (double)job->sent)};
  finish_job(env, &job->async, 2, argv);
}

static napi_value js_send_file_async(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  int64_t socket_fd, file_fd, position, length, stall_ms;
  void *header;
  size_t header_bytes;
  bool is_buffer = false;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 7 || !get_i64(env, argv[0], &socket_fd) ||
      napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[1], &header, &header_bytes) != napi_ok || header_bytes > REPLY_HEADER_MAX ||
      !get_i64(env, argv[2], &file_fd) || !get_i64(env, argv[3], &position) || position < 0 ||
      !get_i64(env, argv[4], &length) || length < 0 || !get_i64(env, argv[5], &stall_ms) || stall_ms < 0 ||
      !is_function(env, argv[6])) {
    napi_throw_type_error(env, NULL,
        "sendFileAsync(socketFd, header<=64 bytes, fileFd, position, length, stallMs, callback)");
    return NULL;
  }
  send_file_job *job = new_job(env, sizeof(*job), "sendFileAsync");
  if (job == NULL) return NULL;
  job->socket_fd = (int)socket_fd;
  job->file_fd = (int)file_fd;
  memcpy(job->header, header, header_bytes);
  job->header_bytes = header_bytes;
  job->position = (off_t)position;
  job->length = (uint64_t)length;
  job->stall_ms = (uint64_t)stall_ms;
  queue_job(env, &job->async, argv[6], "nbd-mirror:sendfile", send_file_execute, send_file_complete);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"fallocate", NULL, js_fallocate, NULL, NULL, NULL, napi_default, NULL},
      {"fallocateAsync", NULL, js_fallocate_async, NULL, NULL, NULL, napi_default, NULL},
      {"seek", NULL, js_seek, NULL, NULL, NULL, napi_default, NULL},
      {"preadNoWait", NULL, js_pread_nowait, NULL, NULL, NULL, napi_default, NULL},
      {"pwriteSync", NULL, js_pwrite_sync, NULL, NULL, NULL, napi_default, NULL},
      {"dup", NULL, js_dup, NULL, NULL, NULL, napi_default, NULL},
      {"shutdownSocket", NULL, js_shutdown_socket, NULL, NULL, NULL, napi_default, NULL},
      {"sendFileAsync", NULL, js_send_file_async, NULL, NULL, NULL, napi_default, NULL},
      {"lockFile", NULL, js_lock_file, NULL, NULL, NULL, napi_default, NULL},
      {"lockHolder", NULL, js_lock_holder, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(properties) / sizeof(properties[0]), properties);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
