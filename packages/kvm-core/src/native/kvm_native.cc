// The thin native layer of @tskvm/kvm-core: system calls only.
// Every struct layout, ioctl number and policy lives in TypeScript; this file
// turns JS values into syscall arguments and errno into JS errors.
#include <napi.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <map>
#include <mutex>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <vector>

namespace {

Napi::Value ThrowErrno(Napi::Env env, const char* syscall, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(syscall) + ": " + strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowType(Napi::Env env, const std::string& msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

bool GetInt(const Napi::CallbackInfo& info, size_t i, int64_t* out) {
  if (info.Length() <= i) return false;
  if (info[i].IsNumber()) {
    double d = info[i].As<Napi::Number>().DoubleValue();
    *out = static_cast<int64_t>(d);
    return static_cast<double>(*out) == d;
  }
  if (info[i].IsBigInt()) {
    bool lossless = false;
    *out = static_cast<int64_t>(info[i].As<Napi::BigInt>().Uint64Value(&lossless));
    return lossless;
  }
  return false;
}

bool GetBytes(const Napi::Value& v, uint8_t** data, size_t* len) {
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    auto ab = ta.ArrayBuffer();
    *data = static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset();
    *len = ta.ByteLength();
    return true;
  }
  if (v.IsDataView()) {
    auto dv = v.As<Napi::DataView>();
    *data = static_cast<uint8_t*>(dv.ArrayBuffer().Data()) + dv.ByteOffset();
    *len = dv.ByteLength();
    return true;
  }
  if (v.IsArrayBuffer()) {
    auto ab = v.As<Napi::ArrayBuffer>();
    *data = static_cast<uint8_t*>(ab.Data());
    *len = ab.ByteLength();
    return true;
  }
  return false;
}

// Process-wide table of native mappings, shared by every worker thread.
// Views are only ever handed out for ranges inside a live mapping, so a
// wrong id, offset or length is an error rather than a host memory access.
struct Mapping {
  uint8_t* addr;
  size_t length;
  bool live;
};
std::mutex g_mappings_lock;
std::map<uint32_t, Mapping> g_mappings;
uint32_t g_next_mapping = 1;

Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t flags = 0;
  if (!info[0].IsString() || !GetInt(info, 1, &flags)) return ThrowType(env, "open(path, flags)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int fd = ::open(path.c_str(), static_cast<int>(flags) | O_CLOEXEC);
  if (fd < 0) return ThrowErrno(env, "open", errno);
  return Napi::Number::New(env, fd);
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1;
  if (!GetInt(info, 0, &fd)) return ThrowType(env, "close(fd)");
  if (::close(static_cast<int>(fd)) < 0) return ThrowErrno(env, "close", errno);
  return env.Undefined();
}

// ioctl(fd, request, arg): arg is an integer, a byte buffer (passed by
// pointer, the kernel reads and writes it in place) or absent.
Napi::Value Ioctl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1, req = 0;
  if (!GetInt(info, 0, &fd) || !GetInt(info, 1, &req)) return ThrowType(env, "ioctl(fd, request, arg?)");
  unsigned long arg = 0;
  if (info.Length() > 2 && !info[2].IsUndefined()) {
    uint8_t* data = nullptr;
    size_t len = 0;
    int64_t value = 0;
    if (GetBytes(info[2], &data, &len)) {
      arg = reinterpret_cast<unsigned long>(data);
    } else if (GetInt(info, 2, &value)) {
      arg = static_cast<unsigned long>(value);
    } else {
      return ThrowType(env, "ioctl: arg must be an integer or a byte buffer");
    }
  }
  int r = ::ioctl(static_cast<int>(fd), static_cast<unsigned long>(req), arg);
  if (r < 0) return ThrowErrno(env, "ioctl", errno);
  return Napi::Number::New(env, r);
}

// ioctlWithPointer(fd, request, struct, pointerOffset, target): stores the
// address of `target` at `pointerOffset` inside `struct`, then ioctl(struct).
// For the few KVM structs that carry a user pointer (KVM_GET_DIRTY_LOG).
Napi::Value IoctlWithPointer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1, req = 0, off = 0;
  uint8_t *st = nullptr, *target = nullptr;
  size_t st_len = 0, target_len = 0;
  if (!GetInt(info, 0, &fd) || !GetInt(info, 1, &req) || info.Length() < 5 ||
      !GetBytes(info[2], &st, &st_len) || !GetInt(info, 3, &off) || !GetBytes(info[4], &target, &target_len))
    return ThrowType(env, "ioctlWithPointer(fd, request, struct, pointerOffset, target)");
  if (off < 0 || static_cast<size_t>(off) + 8 > st_len) return ThrowType(env, "ioctlWithPointer: pointer offset outside struct");
  uint64_t p = reinterpret_cast<uint64_t>(target);
  memcpy(st + off, &p, 8);
  int r = ::ioctl(static_cast<int>(fd), static_cast<unsigned long>(req), st);
  if (r < 0) return ThrowErrno(env, "ioctl", errno);
  return Napi::Number::New(env, r);
}

// mmap(length, prot, flags, fd, offset, alignment = 0) -> mapping id.
// A power-of-two alignment (anonymous mappings only) over-maps and trims, so
// that huge pages can back the whole range.
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t length = 0, prot = 0, flags = 0, fd = -1, offset = 0, align = 0;
  if (!GetInt(info, 0, &length) || !GetInt(info, 1, &prot) || !GetInt(info, 2, &flags) || !GetInt(info, 3, &fd) ||
      !GetInt(info, 4, &offset) || length <= 0 || (info.Length() > 5 && !GetInt(info, 5, &align)))
    return ThrowType(env, "mmap(length, prot, flags, fd, offset, alignment?)");
  if (align < 0 || (align & (align - 1)) != 0 || (align > 0 && fd != -1))
    return ThrowType(env, "mmap: alignment must be a power of two, for anonymous mappings");
  size_t len = static_cast<size_t>(length);
  size_t extra = align > 4096 ? static_cast<size_t>(align) : 0;
  void* p = ::mmap(nullptr, len + extra, static_cast<int>(prot), static_cast<int>(flags), static_cast<int>(fd),
                   static_cast<off_t>(offset));
  if (p == MAP_FAILED) return ThrowErrno(env, "mmap", errno);
  if (extra) {
    uintptr_t start = reinterpret_cast<uintptr_t>(p);
    uintptr_t aligned = (start + extra - 1) & ~(static_cast<uintptr_t>(extra) - 1);
    if (aligned > start) ::munmap(p, aligned - start);
    size_t tail = start + len + extra - (aligned + len);
    if (tail) ::munmap(reinterpret_cast<void*>(aligned + len), tail);
    p = reinterpret_cast<void*>(aligned);
  }
  std::lock_guard<std::mutex> guard(g_mappings_lock);
  uint32_t id = g_next_mapping++;
  g_mappings[id] = Mapping{static_cast<uint8_t*>(p), len, true};
  return Napi::Number::New(env, id);
}

bool FindLive(uint32_t id, Mapping* out) {
  std::lock_guard<std::mutex> guard(g_mappings_lock);
  auto it = g_mappings.find(id);
  if (it == g_mappings.end() || !it->second.live) return false;
  *out = it->second;
  return true;
}

Napi::Value MappingAddress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t id = 0;
  Mapping m;
  if (!GetInt(info, 0, &id)) return ThrowType(env, "mappingAddress(id)");
  if (!FindLive(static_cast<uint32_t>(id), &m)) return ThrowErrno(env, "mappingAddress", EBADF);
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(m.addr)));
}

// mappingView(id, offset, length) -> ArrayBuffer over the mapping (no copy).
// The buffer never frees the memory: the mapping table owns it.
Napi::Value MappingView(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t id = 0, off = 0, len = 0;
  Mapping m;
  if (!GetInt(info, 0, &id) || !GetInt(info, 1, &off) || !GetInt(info, 2, &len))
    return ThrowType(env, "mappingView(id, offset, length)");
  if (!FindLive(static_cast<uint32_t>(id), &m)) return ThrowErrno(env, "mappingView", EBADF);
  if (off < 0 || len <= 0 || static_cast<uint64_t>(off) + static_cast<uint64_t>(len) > m.length)
    return ThrowErrno(env, "mappingView", ERANGE);
  napi_value ab;
  napi_status s = napi_create_external_arraybuffer(env, m.addr + off, static_cast<size_t>(len), nullptr, nullptr, &ab);
  if (s != napi_ok) return ThrowErrno(env, "mappingView", ENOMEM);
  return Napi::Value(env, ab);
}

// unmap(id): gives the memory back to the kernel. The address range stays
// reserved (as fresh zero pages) because views in other threads may still
// point at it; touching them afterwards reads zeros instead of faulting.
Napi::Value Unmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t id = 0;
  if (!GetInt(info, 0, &id)) return ThrowType(env, "unmap(id)");
  std::lock_guard<std::mutex> guard(g_mappings_lock);
  auto it = g_mappings.find(static_cast<uint32_t>(id));
  if (it == g_mappings.end() || !it->second.live) return ThrowErrno(env, "unmap", EBADF);
  void* p = ::mmap(it->second.addr, it->second.length, PROT_READ | PROT_WRITE,
                   MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return ThrowErrno(env, "mmap", errno);
  it->second.live = false;
  return env.Undefined();
}

// madvise(id, offset, length, advice) on part of a live mapping.
Napi::Value Madvise(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t id = 0, off = 0, len = 0, advice = 0;
  Mapping m;
  if (!GetInt(info, 0, &id) || !GetInt(info, 1, &off) || !GetInt(info, 2, &len) || !GetInt(info, 3, &advice))
    return ThrowType(env, "madvise(id, offset, length, advice)");
  if (!FindLive(static_cast<uint32_t>(id), &m)) return ThrowErrno(env, "madvise", EBADF);
  if (off < 0 || len <= 0 || static_cast<uint64_t>(off) + static_cast<uint64_t>(len) > m.length)
    return ThrowErrno(env, "madvise", ERANGE);
  if (::madvise(m.addr + off, static_cast<size_t>(len), static_cast<int>(advice)) < 0)
    return ThrowErrno(env, "madvise", errno);
  return env.Undefined();
}

Napi::Value EventFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t init = 0, flags = 0;
  if (!GetInt(info, 0, &init) || !GetInt(info, 1, &flags)) return ThrowType(env, "eventfd(initval, flags)");
  int fd = ::eventfd(static_cast<unsigned int>(init), static_cast<int>(flags) | EFD_CLOEXEC);
  if (fd < 0) return ThrowErrno(env, "eventfd", errno);
  return Napi::Number::New(env, fd);
}

// eventfdRead(fd) -> bigint counter. Blocks unless the fd is non-blocking.
Napi::Value EventFdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1;
  if (!GetInt(info, 0, &fd)) return ThrowType(env, "eventfdRead(fd)");
  uint64_t v = 0;
  ssize_t n = ::read(static_cast<int>(fd), &v, sizeof v);
  if (n < 0) return ThrowErrno(env, "read", errno);
  if (n != sizeof v) return ThrowErrno(env, "read", EIO);
  return Napi::BigInt::New(env, v);
}

// eventfdConsume(fd) -> true when the counter was read (and reset), false when it was zero on a
// non-blocking fd. Nothing allocated: a device loop calls this on every wake-up.
Napi::Value EventFdConsume(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1;
  if (!GetInt(info, 0, &fd)) return ThrowType(env, "eventfdConsume(fd)");
  uint64_t v = 0;
  ssize_t n = ::read(static_cast<int>(fd), &v, sizeof v);
  if (n < 0 && errno == EAGAIN) return Napi::Boolean::New(env, false);
  if (n < 0) return ThrowErrno(env, "read", errno);
  if (n != sizeof v) return ThrowErrno(env, "read", EIO);
  return Napi::Boolean::New(env, true);
}

Napi::Value EventFdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1, value = 0;
  if (!GetInt(info, 0, &fd) || !GetInt(info, 1, &value)) return ThrowType(env, "eventfdWrite(fd, value)");
  uint64_t v = static_cast<uint64_t>(value);
  ssize_t n = ::write(static_cast<int>(fd), &v, sizeof v);
  if (n < 0) return ThrowErrno(env, "write", errno);
  return env.Undefined();
}

// poll(fds: Int32Array, events: Int16Array, revents: Int16Array, timeoutMs) -> ready count
Napi::Value Poll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t timeout = -1;
  if (info.Length() < 4 || !info[0].IsTypedArray() || !info[1].IsTypedArray() || !info[2].IsTypedArray() ||
      !GetInt(info, 3, &timeout))
    return ThrowType(env, "poll(fds, events, revents, timeoutMs)");
  auto fds = info[0].As<Napi::Int32Array>();
  auto events = info[1].As<Napi::Int16Array>();
  auto revents = info[2].As<Napi::Int16Array>();
  size_t n = fds.ElementLength();
  if (events.ElementLength() != n || revents.ElementLength() != n) return ThrowType(env, "poll: array lengths differ");
  // A device loop polls a handful of fds on every wake-up: those stay on the stack.
  pollfd small[16];
  std::vector<pollfd> large(n > 16 ? n : 0);
  pollfd* p = n > 16 ? large.data() : small;
  for (size_t i = 0; i < n; i++) p[i] = pollfd{fds[i], events[i], 0};
  int r = ::poll(p, n, static_cast<int>(timeout));
  if (r < 0) return ThrowErrno(env, "poll", errno);
  for (size_t i = 0; i < n; i++) revents[i] = p[i].revents;
  return Napi::Number::New(env, r);
}

Napi::Value Gettid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(::syscall(SYS_gettid)));
}

Napi::Value Getpid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(::getpid()));
}

// ioprioSet(which, who, ioprio) / ioprioGet(which, who): the raw ioprio_set(2) /
// ioprio_get(2) system calls (no glibc wrapper). The class/level encoding is TypeScript's.
Napi::Value IoprioSet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t which = 0, who = 0, prio = 0;
  if (!GetInt(info, 0, &which) || !GetInt(info, 1, &who) || !GetInt(info, 2, &prio))
    return ThrowType(env, "ioprioSet(which, who, ioprio)");
  if (::syscall(SYS_ioprio_set, static_cast<int>(which), static_cast<int>(who), static_cast<int>(prio)) < 0)
    return ThrowErrno(env, "ioprio_set", errno);
  return env.Undefined();
}

Napi::Value IoprioGet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t which = 0, who = 0;
  if (!GetInt(info, 0, &which) || !GetInt(info, 1, &who)) return ThrowType(env, "ioprioGet(which, who)");
  long r = ::syscall(SYS_ioprio_get, static_cast<int>(which), static_cast<int>(who));
  if (r < 0) return ThrowErrno(env, "ioprio_get", errno);
  return Napi::Number::New(env, static_cast<double>(r));
}

void NoopHandler(int) {}

// The signal that kicks a vCPU thread out of KVM_RUN (or any blocking
// syscall) with EINTR. A realtime signal: Node owns SIGUSR1/SIGUSR2.
int KickSignal() { return SIGRTMIN + 3; }

// installKickSignal() -> signal number. Installs a no-op handler without
// SA_RESTART (process-wide) and unblocks the signal in the calling thread.
Napi::Value InstallKickSignal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sig = KickSignal();
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = NoopHandler;
  sigemptyset(&sa.sa_mask);
  if (sigaction(sig, &sa, nullptr) < 0) return ThrowErrno(env, "sigaction", errno);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  int r = pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  if (r != 0) return ThrowErrno(env, "pthread_sigmask", r);
  return Napi::Number::New(env, sig);
}

// kickThread(tid): tgkill the kick signal to one thread of this process.
Napi::Value KickThread(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t tid = 0;
  if (!GetInt(info, 0, &tid) || tid <= 0) return ThrowType(env, "kickThread(tid)");
  if (::syscall(SYS_tgkill, ::getpid(), static_cast<pid_t>(tid), KickSignal()) < 0)
    return ThrowErrno(env, "tgkill", errno);
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("open", Napi::Function::New(env, Open));
  exports.Set("close", Napi::Function::New(env, Close));
  exports.Set("ioctl", Napi::Function::New(env, Ioctl));
  exports.Set("ioctlWithPointer", Napi::Function::New(env, IoctlWithPointer));
  exports.Set("mmap", Napi::Function::New(env, Mmap));
  exports.Set("mappingAddress", Napi::Function::New(env, MappingAddress));
  exports.Set("mappingView", Napi::Function::New(env, MappingView));
  exports.Set("unmap", Napi::Function::New(env, Unmap));
  exports.Set("madvise", Napi::Function::New(env, Madvise));
  exports.Set("eventfd", Napi::Function::New(env, EventFd));
  exports.Set("eventfdRead", Napi::Function::New(env, EventFdRead));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventFdWrite));
  exports.Set("eventfdConsume", Napi::Function::New(env, EventFdConsume));
  exports.Set("poll", Napi::Function::New(env, Poll));
  exports.Set("gettid", Napi::Function::New(env, Gettid));
  exports.Set("getpid", Napi::Function::New(env, Getpid));
  exports.Set("ioprioSet", Napi::Function::New(env, IoprioSet));
  exports.Set("ioprioGet", Napi::Function::New(env, IoprioGet));
  exports.Set("installKickSignal", Napi::Function::New(env, InstallKickSignal));
  exports.Set("kickThread", Napi::Function::New(env, KickThread));
  return exports;
}

}  // namespace

NODE_API_MODULE(kvm_native, Init)
