// The io_uring mechanics behind @tskvm/disk-image's asynchronous queues, on the
// raw system calls (no liburing, so a prebuilt binary needs nothing at run
// time): io_uring_setup and the mmap of the rings, filling SQEs, one
// io_uring_enter per submit, moving CQEs out, and the eventfd the kernel
// signals for each completion. Which requests, which descriptor, what a short
// transfer or an error means, tags and limits are all decided in TypeScript
// (src/async-queue.ts).
#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <vector>

#if defined(__has_include)
#if __has_include(<linux/io_uring.h>)
#include <linux/io_uring.h>
#define TSKVM_HAVE_IO_URING 1
#endif
#endif

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

namespace {

Napi::Error ErrnoError(Napi::Env env, const char* syscall, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(syscall) + ": " + strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

// An integer argument in [lo, hi] that a double represents exactly.
bool IntArg(const Napi::CallbackInfo& info, size_t i, int64_t lo, int64_t hi, int64_t* out) {
  if (info.Length() <= i || !info[i].IsNumber()) return false;
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi))) return false;
  *out = static_cast<int64_t>(d);
  return static_cast<double>(*out) == d;
}

bool BoolArg(const Napi::CallbackInfo& info, size_t i, bool* out) {
  if (info.Length() <= i || !info[i].IsBoolean()) return false;
  *out = info[i].As<Napi::Boolean>().Value();
  return true;
}

constexpr int64_t kMaxSafe = 9007199254740991LL;
// Most iovecs one READV / WRITEV takes (UIO_MAXIOV).
constexpr int64_t kIovMax = 1024;

// eventfd() -> a non-blocking, close-on-exec eventfd with counter 0.
Napi::Value EventfdCreate(const Napi::CallbackInfo& info) {
  int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) {
    ErrnoError(info.Env(), "eventfd", errno).ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  return Napi::Number::New(info.Env(), fd);
}

// eventfdRead(fd) -> the counter it had (now 0), or 0 when it was 0 already.
Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!IntArg(info, 0, 0, 0x7fffffff, &fd)) {
    Napi::TypeError::New(env, "eventfdRead(fd)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint64_t v = 0;
  ssize_t r;
  do {
    r = ::read(static_cast<int>(fd), &v, sizeof v);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EAGAIN) return Napi::Number::New(env, 0);
    ErrnoError(env, "read", errno).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(v));
}

// eventfdWrite(fd) -> adds 1 to the counter (makes the fd readable).
Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!IntArg(info, 0, 0, 0x7fffffff, &fd)) {
    Napi::TypeError::New(env, "eventfdWrite(fd)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint64_t one = 1;
  ssize_t r;
  do {
    r = ::write(static_cast<int>(fd), &one, sizeof one);
  } while (r < 0 && errno == EINTR);
  // EAGAIN: the counter is at its maximum, so the fd is readable anyway.
  if (r < 0 && errno != EAGAIN) ErrnoError(env, "write", errno).ThrowAsJavaScriptException();
  return env.Undefined();
}

// closeFd(fd): close(2) of an fd this addon made. Not fs.closeSync: in a worker thread Node
// warns about closing an fd it did not open there ("closed but not opened in unmanaged mode").
Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!IntArg(info, 0, 0, 0x7fffffff, &fd)) {
    Napi::TypeError::New(env, "closeFd(fd)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // EINTR: the fd is closed anyway on Linux; retrying could close someone else's.
  if (::close(static_cast<int>(fd)) < 0 && errno != EINTR)
    ErrnoError(env, "close", errno).ThrowAsJavaScriptException();
  return env.Undefined();
}

#ifdef TSKVM_HAVE_IO_URING

template <typename T>
T LoadAcquire(const T* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
template <typename T>
void StoreRelease(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

// One ring. new IoUring(entries); then prep* fills SQEs (user_data: a slot
// number below cqEntries, which also picks the slot's iovec storage), submit()
// hands them to the kernel, reap() moves CQEs out.
class IoUring : public Napi::ObjectWrap<IoUring> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "IoUring",
                       {
                           InstanceMethod("registerEventfd", &IoUring::RegisterEventfd),
                           InstanceMethod("prepRw", &IoUring::PrepRw),
                           InstanceMethod("prepFsync", &IoUring::PrepFsync),
                           InstanceMethod("prepNop", &IoUring::PrepNop),
                           InstanceMethod("submit", &IoUring::Submit),
                           InstanceMethod("reap", &IoUring::Reap),
                           InstanceMethod("cqReady", &IoUring::CqReady),
                           InstanceMethod("close", &IoUring::Close),
                           InstanceAccessor("sqEntries", &IoUring::SqEntries, nullptr),
                           InstanceAccessor("cqEntries", &IoUring::CqEntries, nullptr),
                           InstanceAccessor("features", &IoUring::Features, nullptr),
                       });
  }

  explicit IoUring(const Napi::CallbackInfo& info) : Napi::ObjectWrap<IoUring>(info) {
    Napi::Env env = info.Env();
    int64_t entries;
    if (!IntArg(info, 0, 1, 4096, &entries)) {
      Napi::TypeError::New(env, "new IoUring(entries 1..4096)").ThrowAsJavaScriptException();
      return;
    }
    // No flags: in particular no COOP_TASKRUN / DEFER_TASKRUN, which would leave a
    // completion unposted (and the eventfd quiet) until this thread enters the
    // kernel for io_uring, while it may be asleep in poll() on that eventfd.
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    int fd = static_cast<int>(::syscall(__NR_io_uring_setup, static_cast<unsigned>(entries), &p));
    if (fd < 0) {
      ErrnoError(env, "io_uring_setup", errno).ThrowAsJavaScriptException();
      return;
    }
    ring_fd_ = fd;
    features_ = p.features;
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    bool single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single) sq_len = cq_len = sq_len > cq_len ? sq_len : cq_len;
    void* sq = ::mmap(nullptr, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (sq == MAP_FAILED) {
      Fail(env, "mmap");
      return;
    }
    sq_ring_ = sq;
    sq_ring_len_ = sq_len;
    void* cq = sq;
    if (!single) {
      cq = ::mmap(nullptr, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
      if (cq == MAP_FAILED) {
        Fail(env, "mmap");
        return;
      }
      cq_ring_ = cq;
      cq_ring_len_ = cq_len;
    }
    size_t sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    void* sqes = ::mmap(nullptr, sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (sqes == MAP_FAILED) {
      Fail(env, "mmap");
      return;
    }
    sqes_ = static_cast<struct io_uring_sqe*>(sqes);
    sqes_len_ = sqes_len;

    char* s = static_cast<char*>(sq);
    sq_head_ = reinterpret_cast<unsigned*>(s + p.sq_off.head);
    sq_tail_ = reinterpret_cast<unsigned*>(s + p.sq_off.tail);
    sq_mask_ = *reinterpret_cast<unsigned*>(s + p.sq_off.ring_mask);
    sq_entries_ = *reinterpret_cast<unsigned*>(s + p.sq_off.ring_entries);
    unsigned* array = reinterpret_cast<unsigned*>(s + p.sq_off.array);
    // SQE i always sits in ring slot i: the indirection array is the identity.
    for (unsigned i = 0; i < sq_entries_; i++) array[i] = i;
    char* c = static_cast<char*>(cq);
    cq_head_ = reinterpret_cast<unsigned*>(c + p.cq_off.head);
    cq_tail_ = reinterpret_cast<unsigned*>(c + p.cq_off.tail);
    cq_mask_ = *reinterpret_cast<unsigned*>(c + p.cq_off.ring_mask);
    cq_entries_ = *reinterpret_cast<unsigned*>(c + p.cq_off.ring_entries);
    cqes_ = reinterpret_cast<struct io_uring_cqe*>(c + p.cq_off.cqes);
    local_tail_ = *sq_tail_;
    iovs_.resize(cq_entries_);
  }

  ~IoUring() override { Release(); }

 private:
  void Fail(Napi::Env env, const char* syscall) {
    int err = errno;
    Release();
    ErrnoError(env, syscall, err).ThrowAsJavaScriptException();
  }

  // Waits for the kernel to finish with every submitted SQE (their buffers
  // belong to the caller), then unmaps the rings and closes the ring fd.
  void Release() {
    if (ring_fd_ >= 0 && cq_head_ != nullptr) {
      while (in_kernel_ > 0) {
        unsigned ready = LoadAcquire(cq_tail_) - *cq_head_;
        if (ready > 0) {
          unsigned n = ready < in_kernel_ ? ready : in_kernel_;
          StoreRelease(cq_head_, *cq_head_ + ready);
          in_kernel_ -= n;
          continue;
        }
        long r = ::syscall(__NR_io_uring_enter, ring_fd_, 0, 1, IORING_ENTER_GETEVENTS, nullptr, 0);
        if (r < 0 && errno != EINTR) break;
      }
    }
    if (sqes_ != nullptr) ::munmap(sqes_, sqes_len_);
    if (cq_ring_ != nullptr) ::munmap(cq_ring_, cq_ring_len_);
    if (sq_ring_ != nullptr) ::munmap(sq_ring_, sq_ring_len_);
    sqes_ = nullptr;
    cq_ring_ = nullptr;
    sq_ring_ = nullptr;
    cq_head_ = nullptr;
    if (ring_fd_ >= 0) ::close(ring_fd_);
    ring_fd_ = -1;
    iovs_.clear();
  }

  bool Open(Napi::Env env) {
    if (ring_fd_ >= 0 && sq_ring_ != nullptr) return true;
    Napi::Error::New(env, "IoUring: closed").ThrowAsJavaScriptException();
    return false;
  }

  // The next free SQE, zeroed, or nullptr when the SQ is full.
  struct io_uring_sqe* NextSqe() {
    unsigned head = LoadAcquire(sq_head_);
    if (local_tail_ - head >= sq_entries_) return nullptr;
    struct io_uring_sqe* sqe = &sqes_[local_tail_ & sq_mask_];
    memset(sqe, 0, sizeof *sqe);
    return sqe;
  }

  // Publishes the filled SQE: the kernel sees it once the tail moves (release).
  void Push() {
    local_tail_++;
    StoreRelease(sq_tail_, local_tail_);
  }

  Napi::Value RegisterEventfd(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    int64_t efd;
    if (!IntArg(info, 0, 0, 0x7fffffff, &efd)) {
      Napi::TypeError::New(env, "registerEventfd(fd)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    int32_t fd = static_cast<int32_t>(efd);
    if (::syscall(__NR_io_uring_register, ring_fd_, IORING_REGISTER_EVENTFD, &fd, 1) < 0)
      ErrnoError(env, "io_uring_register", errno).ThrowAsJavaScriptException();
    return env.Undefined();
  }

  bool SlotArg(const Napi::CallbackInfo& info, size_t i, uint64_t* out) {
    int64_t v;
    if (!IntArg(info, i, 0, static_cast<int64_t>(iovs_.size()) - 1, &v)) return false;
    *out = static_cast<uint64_t>(v);
    return true;
  }

  // prepRw(write, fd, offset, buffers, start, count, skip, userData, drain) ->
  // false when the SQ is full. One READV / WRITEV of buffers[start, start +
  // count) (1..1024 of them) at `offset`, the first one entered `skip` bytes
  // in. The iovecs live in the slot's storage until its next prep.
  Napi::Value PrepRw(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    const char* usage = "prepRw(write, fd, offset, buffers, start, count, skip, userData, drain)";
    bool write, drain;
    int64_t fd, offset, start, count, skip;
    uint64_t slot;
    if (!BoolArg(info, 0, &write) || !IntArg(info, 1, 0, 0x7fffffff, &fd) ||
        !IntArg(info, 2, 0, kMaxSafe, &offset) || info.Length() < 4 || !info[3].IsArray() ||
        !IntArg(info, 4, 0, 0xffffffffLL, &start) || !IntArg(info, 5, 1, kIovMax, &count) ||
        !IntArg(info, 6, 0, kMaxSafe, &skip) || !SlotArg(info, 7, &slot) || !BoolArg(info, 8, &drain)) {
      Napi::TypeError::New(env, usage).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    napi_value buffers = info[3];
    uint32_t length = 0;
    napi_get_array_length(env, buffers, &length);
    if (start + count > length) {
      Napi::TypeError::New(env, "prepRw: start + count exceeds the buffers").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    std::vector<struct iovec>& iov = iovs_[slot];
    iov.resize(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; i++) {
      napi_value v;
      bool is = false;
      napi_typedarray_type type;
      size_t len = 0;
      void* data = nullptr;
      if (napi_get_element(env, buffers, static_cast<uint32_t>(start + i), &v) != napi_ok ||
          napi_is_typedarray(env, v, &is) != napi_ok || !is ||
          napi_get_typedarray_info(env, v, &type, &len, &data, nullptr, nullptr) != napi_ok ||
          type != napi_uint8_array) {
        Napi::TypeError::New(env, "prepRw: every buffer must be a Uint8Array").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      size_t off = i == 0 ? static_cast<size_t>(skip) : 0;
      if (off > len) {
        Napi::TypeError::New(env, "prepRw: skip exceeds the first buffer").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      iov[i].iov_base = static_cast<char*>(data) + off;
      iov[i].iov_len = len - off;
    }
    struct io_uring_sqe* sqe = NextSqe();
    if (sqe == nullptr) return Napi::Boolean::New(env, false);
    sqe->opcode = write ? IORING_OP_WRITEV : IORING_OP_READV;
    sqe->flags = drain ? IOSQE_IO_DRAIN : 0;
    sqe->fd = static_cast<int32_t>(fd);
    sqe->off = static_cast<uint64_t>(offset);
    sqe->addr = reinterpret_cast<uint64_t>(iov.data());
    sqe->len = static_cast<uint32_t>(count);
    sqe->user_data = slot;
    Push();
    return Napi::Boolean::New(env, true);
  }

  // prepFsync(fd, datasync, userData, drain) -> false when the SQ is full.
  Napi::Value PrepFsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    bool datasync, drain;
    int64_t fd;
    uint64_t slot;
    if (!IntArg(info, 0, 0, 0x7fffffff, &fd) || !BoolArg(info, 1, &datasync) || !SlotArg(info, 2, &slot) ||
        !BoolArg(info, 3, &drain)) {
      Napi::TypeError::New(env, "prepFsync(fd, datasync, userData, drain)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    struct io_uring_sqe* sqe = NextSqe();
    if (sqe == nullptr) return Napi::Boolean::New(env, false);
    sqe->opcode = IORING_OP_FSYNC;
    sqe->flags = drain ? IOSQE_IO_DRAIN : 0;
    sqe->fd = static_cast<int32_t>(fd);
    sqe->fsync_flags = datasync ? IORING_FSYNC_DATASYNC : 0;
    sqe->user_data = slot;
    Push();
    return Napi::Boolean::New(env, true);
  }

  // prepNop(userData, drain) -> false when the SQ is full.
  Napi::Value PrepNop(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    bool drain;
    uint64_t slot;
    if (!SlotArg(info, 0, &slot) || !BoolArg(info, 1, &drain)) {
      Napi::TypeError::New(env, "prepNop(userData, drain)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    struct io_uring_sqe* sqe = NextSqe();
    if (sqe == nullptr) return Napi::Boolean::New(env, false);
    sqe->opcode = IORING_OP_NOP;
    sqe->flags = drain ? IOSQE_IO_DRAIN : 0;
    sqe->user_data = slot;
    Push();
    return Napi::Boolean::New(env, true);
  }

  // submit(waitFor) -> how many prepared SQEs the kernel has not taken yet
  // (0 normally), or -errno for EAGAIN / EBUSY (try again later). One
  // io_uring_enter for everything prepared; with waitFor > 0 it also blocks
  // until that many CQEs wait. EINTR is retried; other errors throw.
  Napi::Value Submit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    int64_t wait;
    if (!IntArg(info, 0, 0, 0xffffffffLL, &wait)) {
      Napi::TypeError::New(env, "submit(waitFor)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    for (;;) {
      unsigned pending = local_tail_ - LoadAcquire(sq_head_);
      if (pending == 0 && wait == 0) return Napi::Number::New(env, 0);
      unsigned flags = wait > 0 ? IORING_ENTER_GETEVENTS : 0;
      long r = ::syscall(__NR_io_uring_enter, ring_fd_, pending, static_cast<unsigned>(wait), flags, nullptr, 0);
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EBUSY) return Napi::Number::New(env, -errno);
        ErrnoError(env, "io_uring_enter", errno).ThrowAsJavaScriptException();
        return env.Undefined();
      }
      in_kernel_ += static_cast<unsigned>(r);
      unsigned left = local_tail_ - LoadAcquire(sq_head_);
      return Napi::Number::New(env, left);
    }
  }

  // reap(userData: Uint32Array, results: Int32Array) -> n: moves up to
  // min(lengths) CQEs out (user_data's low 32 bits and res).
  Napi::Value Reap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
        info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
      Napi::TypeError::New(env, "reap(userData: Uint32Array, results: Int32Array)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Uint32Array ud = info[0].As<Napi::Uint32Array>();
    Napi::Int32Array res = info[1].As<Napi::Int32Array>();
    size_t max = ud.ElementLength() < res.ElementLength() ? ud.ElementLength() : res.ElementLength();
    unsigned head = *cq_head_;
    unsigned tail = LoadAcquire(cq_tail_);
    size_t n = 0;
    while (head != tail && n < max) {
      const struct io_uring_cqe* cqe = &cqes_[head & cq_mask_];
      ud[n] = static_cast<uint32_t>(cqe->user_data);
      res[n] = cqe->res;
      n++;
      head++;
    }
    // The kernel may reuse the entries once the head moves past them (release).
    StoreRelease(cq_head_, head);
    in_kernel_ -= static_cast<unsigned>(n) < in_kernel_ ? static_cast<unsigned>(n) : in_kernel_;
    return Napi::Number::New(env, static_cast<double>(n));
  }

  Napi::Value CqReady(const Napi::CallbackInfo& info) {
    if (!Open(info.Env())) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), LoadAcquire(cq_tail_) - *cq_head_);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Release();
    return info.Env().Undefined();
  }

  Napi::Value SqEntries(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), sq_entries_); }
  Napi::Value CqEntries(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), cq_entries_); }
  Napi::Value Features(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), features_); }

  int ring_fd_ = -1;
  unsigned features_ = 0;
  void* sq_ring_ = nullptr;
  size_t sq_ring_len_ = 0;
  void* cq_ring_ = nullptr;  // only without IORING_FEAT_SINGLE_MMAP
  size_t cq_ring_len_ = 0;
  struct io_uring_sqe* sqes_ = nullptr;
  size_t sqes_len_ = 0;
  unsigned* sq_head_ = nullptr;
  unsigned* sq_tail_ = nullptr;
  unsigned sq_mask_ = 0;
  unsigned sq_entries_ = 0;
  unsigned* cq_head_ = nullptr;
  unsigned* cq_tail_ = nullptr;
  unsigned cq_mask_ = 0;
  unsigned cq_entries_ = 0;
  struct io_uring_cqe* cqes_ = nullptr;
  unsigned local_tail_ = 0;
  // SQEs the kernel took whose CQE has not been reaped: Release waits for them.
  unsigned in_kernel_ = 0;
  std::vector<std::vector<struct iovec>> iovs_;
};

#endif  // TSKVM_HAVE_IO_URING

}  // namespace

// Called from the addon's Init (disk_image_native.cc).
void InitAsyncIo(Napi::Env env, Napi::Object exports) {
  exports.Set("eventfd", Napi::Function::New(env, EventfdCreate));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd));
#ifdef TSKVM_HAVE_IO_URING
  exports.Set("IoUring", IoUring::Define(env));
#endif
}
