// The native layer of @tskvm/disk-image: the system calls Node does not offer,
// fallocate(2) and fcntl(2) open-file-description locks, and a batch of
// positional preadv(2) / pwritev(2) calls in one call from JavaScript (and,
// in async_io.cc, eventfds and the io_uring ring). Nothing else: which modes,
// which bytes, what a conflict or an error means are decided in TypeScript.
#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <linux/falloc.h>
#include <string>
#include <sys/uio.h>
#include <unistd.h>
#include <vector>

// src/native/async_io.cc: eventfd helpers and the io_uring ring.
void InitAsyncIo(Napi::Env env, Napi::Object exports);

namespace {

Napi::Value ThrowErrno(Napi::Env env, const char* syscall, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(syscall) + ": " + strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowType(Napi::Env env, const char* msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

// A non-negative integer argument that a double represents exactly.
bool GetInt(const Napi::CallbackInfo& info, size_t i, int64_t* out) {
  if (info.Length() <= i || !info[i].IsNumber()) return false;
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= -9007199254740991.0 && d <= 9007199254740991.0)) return false;
  *out = static_cast<int64_t>(d);
  return static_cast<double>(*out) == d;
}

// fallocate(fd, mode, offset, length) -> undefined; throws {errno, syscall}.
Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1, mode = 0, offset = 0, length = 0;
  if (!GetInt(info, 0, &fd) || !GetInt(info, 1, &mode) || !GetInt(info, 2, &offset) ||
      !GetInt(info, 3, &length) || fd < 0 || offset < 0 || length <= 0)
    return ThrowType(env, "fallocate(fd, mode, offset, length)");
  int r;
  do {
    r = ::fallocate(static_cast<int>(fd), static_cast<int>(mode), static_cast<off_t>(offset),
                    static_cast<off_t>(length));
  } while (r < 0 && errno == EINTR);
  if (r < 0) return ThrowErrno(env, "fallocate", errno);
  return env.Undefined();
}

// ofdLock(fd, cmd, type, start, length) -> the l_type the kernel left in the
// struct (for F_OFD_GETLK: F_UNLCK when nothing conflicts). Only the two
// open-file-description commands are accepted; F_OFD_SETLK never waits.
Napi::Value OfdLock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1, cmd = 0, type = 0, start = 0, length = 0;
  if (!GetInt(info, 0, &fd) || !GetInt(info, 1, &cmd) || !GetInt(info, 2, &type) ||
      !GetInt(info, 3, &start) || !GetInt(info, 4, &length) || fd < 0 || start < 0 || length < 0)
    return ThrowType(env, "ofdLock(fd, cmd, type, start, length)");
  if (cmd != F_OFD_GETLK && cmd != F_OFD_SETLK) return ThrowType(env, "ofdLock: cmd must be F_OFD_GETLK or F_OFD_SETLK");
  if (type != F_RDLCK && type != F_WRLCK && type != F_UNLCK) return ThrowType(env, "ofdLock: bad lock type");
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = static_cast<short>(type);
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(start);
  fl.l_len = static_cast<off_t>(length);
  int r;
  do {
    r = ::fcntl(static_cast<int>(fd), static_cast<int>(cmd), &fl);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return ThrowErrno(env, "fcntl", errno);
  return Napi::Number::New(env, fl.l_type);
}


// Most iovecs one preadv/pwritev takes (Linux IOV_MAX).
constexpr size_t kIovMax = 1024;

// One positional read or write of the whole iovec list: retried on EINTR,
// continued after a short transfer. A read that meets the end of the file
// (preadv returns 0) fills the rest with zeros, as preadvFull does. Returns
// the bytes transferred (the whole length) or -errno; a pwritev that writes
// nothing is -EIO (it would never finish).
double TransferAll(int fd, bool write, struct iovec* iov, size_t n, int64_t offset) {
  int64_t total = 0;
  for (size_t i = 0; i < n; i++) total += static_cast<int64_t>(iov[i].iov_len);
  size_t idx = 0;
  for (;;) {
    while (idx < n && iov[idx].iov_len == 0) idx++;  // nothing left to move in these
    if (idx == n) break;
    int cnt = static_cast<int>(n - idx < kIovMax ? n - idx : kIovMax);
    ssize_t r = write ? ::pwritev(fd, iov + idx, cnt, static_cast<off_t>(offset))
                      : ::preadv(fd, iov + idx, cnt, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -static_cast<double>(errno);
    }
    if (r == 0) {
      if (write) return -static_cast<double>(EIO);
      for (size_t i = idx; i < n; i++) memset(iov[i].iov_base, 0, iov[i].iov_len);
      return static_cast<double>(total);
    }
    offset += r;
    size_t left = static_cast<size_t>(r);
    while (left > 0 && idx < n) {
      if (left >= iov[idx].iov_len) {
        left -= iov[idx].iov_len;
        idx++;
      } else {
        iov[idx].iov_base = static_cast<char*>(iov[idx].iov_base) + left;
        iov[idx].iov_len -= left;
        left = 0;
      }
    }
  }
  return static_cast<double>(total);
}

// A typed array argument of the given type; its data and element count.
bool GetTyped(napi_env env, napi_value v, napi_typedarray_type want, void** data, size_t* length) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  napi_typedarray_type type;
  if (napi_get_typedarray_info(env, v, &type, length, data, nullptr, nullptr) != napi_ok) return false;
  return type == want;
}

// rwBatch(fd, write, count, offsets: Float64Array, iovCounts: Int32Array,
//         buffers: Uint8Array[], results: Float64Array) -> undefined.
// Operation i transfers buffers[s_i .. s_i + iovCounts[i]) (s_i: the sum of the
// counts before it) at offsets[i], with one preadv / pwritev loop per
// operation, in order; results[i] is the bytes transferred or -errno. An error
// fails only its own operation. Bad arguments throw TypeError before any I/O.
Napi::Value RwBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "rwBatch(fd, write, count, offsets, iovCounts, buffers, results)";
  int64_t fd = -1, count = -1;
  if (info.Length() < 7 || !GetInt(info, 0, &fd) || fd < 0 || fd > 0x7fffffff || !info[1].IsBoolean() ||
      !GetInt(info, 2, &count) || count < 0 || !info[5].IsArray())
    return ThrowType(env, usage);
  bool write = info[1].As<Napi::Boolean>().Value();
  double* offsets;
  int32_t* counts;
  double* results;
  size_t nOffsets, nCounts, nResults;
  if (!GetTyped(env, info[3], napi_float64_array, reinterpret_cast<void**>(&offsets), &nOffsets) ||
      !GetTyped(env, info[4], napi_int32_array, reinterpret_cast<void**>(&counts), &nCounts) ||
      !GetTyped(env, info[6], napi_float64_array, reinterpret_cast<void**>(&results), &nResults))
    return ThrowType(env, usage);
  size_t n = static_cast<size_t>(count);
  if (n > nOffsets || n > nCounts || n > nResults) return ThrowType(env, "rwBatch: count exceeds an array");
  napi_value buffers = info[5];
  uint32_t nBuffers = 0;
  napi_get_array_length(env, buffers, &nBuffers);
  size_t needed = 0;
  for (size_t i = 0; i < n; i++) {
    double o = offsets[i];
    if (counts[i] < 0 || !(o >= 0 && o <= 9007199254740991.0) || static_cast<double>(static_cast<int64_t>(o)) != o)
      return ThrowType(env, "rwBatch: bad offset or iovec count");
    needed += static_cast<size_t>(counts[i]);
  }
  if (needed > nBuffers) return ThrowType(env, "rwBatch: fewer buffers than the counts say");
  // Every buffer is looked up before any I/O: a bad one throws with nothing done.
  static thread_local std::vector<struct iovec> iov;
  iov.resize(needed);
  for (size_t b = 0; b < needed; b++) {
    napi_value v;
    void* data = nullptr;
    size_t len = 0;
    if (napi_get_element(env, buffers, static_cast<uint32_t>(b), &v) != napi_ok ||
        !GetTyped(env, v, napi_uint8_array, &data, &len))
      return ThrowType(env, "rwBatch: every buffer must be a Uint8Array");
    iov[b].iov_base = data;
    iov[b].iov_len = len;
  }
  size_t at = 0;
  for (size_t i = 0; i < n; i++) {
    size_t c = static_cast<size_t>(counts[i]);
    results[i] = TransferAll(static_cast<int>(fd), write, iov.data() + at, c, static_cast<int64_t>(offsets[i]));
    at += c;
  }
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("fallocate", Napi::Function::New(env, Fallocate));
  exports.Set("ofdLock", Napi::Function::New(env, OfdLock));
  exports.Set("rwBatch", Napi::Function::New(env, RwBatch));
  InitAsyncIo(env, exports);
  // The ABI numbers, straight from the C headers this addon was built against.
  Napi::Object c = Napi::Object::New(env);
  c.Set("FALLOC_FL_KEEP_SIZE", Napi::Number::New(env, FALLOC_FL_KEEP_SIZE));
  c.Set("FALLOC_FL_PUNCH_HOLE", Napi::Number::New(env, FALLOC_FL_PUNCH_HOLE));
  c.Set("FALLOC_FL_ZERO_RANGE", Napi::Number::New(env, FALLOC_FL_ZERO_RANGE));
  c.Set("F_OFD_GETLK", Napi::Number::New(env, F_OFD_GETLK));
  c.Set("F_OFD_SETLK", Napi::Number::New(env, F_OFD_SETLK));
  c.Set("F_RDLCK", Napi::Number::New(env, F_RDLCK));
  c.Set("F_WRLCK", Napi::Number::New(env, F_WRLCK));
  c.Set("F_UNLCK", Napi::Number::New(env, F_UNLCK));
  exports.Set("constants", c);
  return exports;
}

}  // namespace

NODE_API_MODULE(disk_image_native, Init)
