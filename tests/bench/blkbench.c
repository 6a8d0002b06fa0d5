/*
 * blkbench: a tiny fio-like block-I/O bench that runs inside the guest.
 *
 *   blkbench [-t SECONDS] [-B MIB] DEVICE [WORKLOAD...]
 *
 * Opens DEVICE with O_DIRECT and drives it with Linux native AIO through raw
 * syscalls (io_setup/io_submit/io_getevents; no libaio), keeping DEPTH requests
 * in flight. Each workload runs for SECONDS (default 3) or until MIB of data
 * have moved (default: no budget), whichever comes first, then drains.
 *
 * Workloads (default: all, in this order):
 *   seqread     1 MiB, depth 8, sequential (wraps at the end of the device)
 *   seqwrite    1 MiB, depth 8, sequential
 *   randread1   4 KiB, depth 1, uniformly random 4 KiB-aligned offsets
 *   randread32  4 KiB, depth 32, random
 *   randwrite32 4 KiB, depth 32, random
 *   fill        1 MiB, depth 8, writes the whole device once (no time limit)
 *
 * Prints one JSON line per workload on stdout:
 *   {"workload":"randread","bs":4096,"depth":32,"ops":N,"bytes":N,"seconds":S,"mbps":M,"iops":I,
 *    "devbytes":N}
 * mbps is 10^6 bytes per second; devbytes is the device's size. Any failed syscall or a completion whose result
 * is not the block size is printed on stderr and the program exits with status 1.
 *
 * Build: gcc -O2 -static -o blkbench blkbench.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_DEPTH 64

static const char *g_dev;

static void die(const char *what) {
  fprintf(stderr, "blkbench: %s: %s: %s\n", g_dev ? g_dev : "-", what, strerror(errno));
  exit(1);
}

static long io_setup_(unsigned nr, aio_context_t *ctx) { return syscall(SYS_io_setup, nr, ctx); }
static long io_destroy_(aio_context_t ctx) { return syscall(SYS_io_destroy, ctx); }
static long io_submit_(aio_context_t ctx, long n, struct iocb **iocbs) {
  return syscall(SYS_io_submit, ctx, n, iocbs);
}
static long io_getevents_(aio_context_t ctx, long min, long max, struct io_event *ev) {
  return syscall(SYS_io_getevents, ctx, min, max, ev, NULL);
}

static double now(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) die("clock_gettime");
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) {
  /* xorshift64* */
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  return g_rng * 0x2545f4914f6cdd1dull;
}

struct workload {
  const char *name;     /* what is printed as "workload" */
  const char *arg;      /* what selects it on the command line */
  unsigned bs, depth;
  int write, random, whole;
};

static const struct workload WORKLOADS[] = {
    {"seqread", "seqread", 1 << 20, 8, 0, 0, 0},
    {"seqwrite", "seqwrite", 1 << 20, 8, 1, 0, 0},
    {"randread", "randread1", 4096, 1, 0, 1, 0},
    {"randread", "randread32", 4096, 32, 0, 1, 0},
    {"randwrite", "randwrite32", 4096, 32, 1, 1, 0},
    {"fill", "fill", 1 << 20, 8, 1, 0, 1},
};
#define N_DEFAULT 5 /* all but fill */

static void run(int fd, uint64_t devsize, const struct workload *w, double seconds, uint64_t budget) {
  aio_context_t ctx = 0;
  struct iocb cbs[MAX_DEPTH];
  struct iocb *ptrs[MAX_DEPTH];
  struct io_event ev[MAX_DEPTH];
  unsigned char *bufs[MAX_DEPTH];
  uint64_t blocks = devsize / w->bs;
  uint64_t next_block = 0, issued = 0, ops = 0, bytes = 0;
  unsigned inflight = 0;
  if (blocks == 0) {
    fprintf(stderr, "blkbench: %s: device smaller than %u bytes\n", g_dev, w->bs);
    exit(1);
  }
  if (w->whole) {
    budget = blocks * (uint64_t)w->bs;
    seconds = 1e9;
  }
  if (io_setup_(w->depth, &ctx) != 0) die("io_setup");
  for (unsigned i = 0; i < w->depth; i++) {
    void *p;
    int e = posix_memalign(&p, 4096, w->bs);
    if (e != 0) {
      errno = e;
      die("posix_memalign");
    }
    bufs[i] = p;
    /* non-zero, not trivially compressible data for writes (and to touch the pages) */
    for (unsigned j = 0; j < w->bs; j += 8) {
      uint64_t r = rnd();
      memcpy(bufs[i] + j, &r, 8);
    }
  }

  /* PREP(i): iocb i for the next request (sequential or random block); counts it in issued. */
  double t0 = now(), deadline = t0 + seconds;
#define PREP(i)                                                                  \
  do {                                                                           \
    uint64_t blk = w->random ? rnd() % blocks : next_block++ % blocks;           \
    memset(&cbs[i], 0, sizeof cbs[i]);                                           \
    cbs[i].aio_data = (i);                                                       \
    cbs[i].aio_lio_opcode = w->write ? IOCB_CMD_PWRITE : IOCB_CMD_PREAD;         \
    cbs[i].aio_fildes = (uint32_t)fd;                                            \
    cbs[i].aio_buf = (uint64_t)(uintptr_t)bufs[i];                               \
    cbs[i].aio_nbytes = w->bs;                                                   \
    cbs[i].aio_offset = (int64_t)(blk * w->bs);                                  \
    issued += w->bs;                                                             \
  } while (0)
#define MAY_ISSUE() ((budget == 0 || issued < budget) && now() < deadline)

  unsigned n = 0;
  for (unsigned i = 0; i < w->depth && (budget == 0 || issued < budget); i++) {
    PREP(i);
    ptrs[n++] = &cbs[i];
  }
  while (n > 0 || inflight > 0) {
    unsigned done = 0;
    while (done < n) {
      long r = io_submit_(ctx, (long)(n - done), ptrs + done);
      if (r < 0) die("io_submit");
      if (r == 0) {
        errno = EAGAIN;
        die("io_submit returned 0");
      }
      done += (unsigned)r;
      inflight += (unsigned)r;
    }
    n = 0;
    long got = io_getevents_(ctx, 1, inflight, ev);
    if (got < 0) {
      if (errno == EINTR) continue;
      die("io_getevents");
    }
    int more = MAY_ISSUE();
    for (long k = 0; k < got; k++) {
      struct iocb *cb = (struct iocb *)(uintptr_t)ev[k].obj;
      inflight--;
      if (ev[k].res != (int64_t)w->bs) {
        if (ev[k].res < 0)
          fprintf(stderr, "blkbench: %s: %s at %lld: %s\n", g_dev, w->write ? "write" : "read",
                  (long long)cb->aio_offset, strerror((int)-ev[k].res));
        else
          fprintf(stderr, "blkbench: %s: %s at %lld: short result %lld of %u\n", g_dev,
                  w->write ? "write" : "read", (long long)cb->aio_offset, (long long)ev[k].res, w->bs);
        exit(1);
      }
      ops++;
      bytes += w->bs;
      if (more && (budget == 0 || issued < budget)) {
        unsigned i = (unsigned)ev[k].data;
        PREP(i);
        ptrs[n++] = &cbs[i];
      }
    }
  }
  double secs = now() - t0;
  if (w->write && fdatasync(fd) != 0) die("fdatasync");
  if (io_destroy_(ctx) != 0) die("io_destroy");
  for (unsigned i = 0; i < w->depth; i++) free(bufs[i]);
  printf("{\"workload\":\"%s\",\"bs\":%u,\"depth\":%u,\"ops\":%llu,\"bytes\":%llu,\"seconds\":%.6f,"
         "\"mbps\":%.2f,\"iops\":%.1f,\"devbytes\":%llu}\n",
         w->name, w->bs, w->depth, (unsigned long long)ops, (unsigned long long)bytes, secs,
         (double)bytes / 1e6 / secs, (double)ops / secs, (unsigned long long)devsize);
  fflush(stdout);
}

static void usage(void) {
  fprintf(stderr,
          "usage: blkbench [-t SECONDS] [-B MIB] DEVICE "
          "[seqread|seqwrite|randread1|randread32|randwrite32|fill ...]\n");
  exit(2);
}

int main(int argc, char **argv) {
  double seconds = 3;
  uint64_t budget = 0;
  int opt;
  while ((opt = getopt(argc, argv, "t:B:")) != -1) {
    char *end;
    switch (opt) {
      case 't':
        seconds = strtod(optarg, &end);
        if (*end || !(seconds > 0)) usage();
        break;
      case 'B':
        budget = strtoull(optarg, &end, 10) << 20;
        if (*end) usage();
        break;
      default:
        usage();
    }
  }
  if (optind >= argc) usage();
  g_dev = argv[optind++];
  int fd = open(g_dev, O_RDWR | O_DIRECT);
  if (fd < 0) die("open O_RDWR|O_DIRECT");
  uint64_t devsize = 0;
  struct stat st;
  if (fstat(fd, &st) != 0) die("fstat");
  if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd, BLKGETSIZE64, &devsize) != 0) die("ioctl BLKGETSIZE64");
  } else {
    devsize = (uint64_t)st.st_size; /* a regular file, for testing on a host */
  }
  /* The host marks where the workloads begin (e.g. to count VM exits per workload). */
  printf("{\"begin\":true}\n");
  fflush(stdout);
  if (optind == argc) {
    for (int i = 0; i < N_DEFAULT; i++) run(fd, devsize, &WORKLOADS[i], seconds, budget);
  } else {
    for (int a = optind; a < argc; a++) {
      const struct workload *w = NULL;
      for (size_t i = 0; i < sizeof WORKLOADS / sizeof WORKLOADS[0]; i++)
        if (strcmp(argv[a], WORKLOADS[i].arg) == 0) w = &WORKLOADS[i];
      if (!w) usage();
      run(fd, devsize, w, seconds, budget);
    }
  }
  if (close(fd) != 0) die("close");
  return 0;
}
