// The native layer of @tskvm/disk-image: the two system calls Node does not
// offer, fallocate(2) and fcntl(2) open-file-description locks. Nothing else:
// which modes, which bytes and what a conflict means are decided in TypeScript.
#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <linux/falloc.h>
#include <string>
#include <unistd.h>

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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("fallocate", Napi::Function::New(env, Fallocate));
  exports.Set("ofdLock", Napi::Function::New(env, OfdLock));
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
