/*
 * conbench: the guest side of the console bench (tests/bench/console.mjs).
 *
 *   conbench rtt N 'LOAD COMMAND'
 *     On the console (stdin/stdout, e.g. /dev/hvc0), in raw mode: N round trips idle, then
 *     N while LOAD COMMAND runs (sh -c, in a process group of its own, started 2 s before the
 *     first of them and killed after the last). A round trip writes a line "@@P<phase>-<i>"
 *     and waits until the host has written the same line back (conbench-drive.py echoes
 *     every such line). Prints
 *       {"rtt":{"idle":{"n","lost","p50us","p99us","maxus"},"loaded":{...}},
 *        "load":{"seconds","reads","readMB","writes","writeMB"}}
 *     where load is what /dev/vda moved while the loaded round trips ran. A line that does
 *     not come back within 10 s is lost; after 3 lost it gives up (exit 1).
 *   conbench hwrng BYTES [SECONDS]
 *     Reads BYTES from /dev/hwrng (or for SECONDS, default 10, whichever ends first) and
 *     prints {"hwrng":{"bytes":N,"seconds":S,"mbps":M}} (mbps: 10^6 bytes per second).
 *
 * Build: gcc -O2 -static -o conbench conbench.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
  fprintf(stderr, "conbench: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void write_all(const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(1, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) die("write");
    p += w, n -= (size_t)w;
  }
}

/* /sys/block/vda/stat: reads, sectors read (fields 1 and 3), writes, sectors written (5 and 7). */
static void disk_stat(unsigned long long v[4]) {
  unsigned long long f[7] = {0};
  FILE *s = fopen("/sys/block/vda/stat", "r");
  if (s) {
    if (fscanf(s, "%llu %llu %llu %llu %llu %llu %llu", &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6]) != 7)
      memset(f, 0, sizeof f);
    fclose(s);
  }
  v[0] = f[0], v[1] = f[2], v[2] = f[4], v[3] = f[6];
}

/* Reads stdin until `line` followed by '\n' has come; 0, or -1 after `timeout` seconds. */
static int await_line(const char *line, double timeout) {
  static char acc[512];
  static size_t len;
  double end = now() + timeout;
  for (;;) {
    char *nl;
    while ((nl = memchr(acc, '\n', len)) != NULL) {
      size_t l = (size_t)(nl - acc);
      if (l > 0 && acc[l - 1] == '\r') l--;
      int match = l == strlen(line) && memcmp(acc, line, l) == 0;
      size_t used = (size_t)(nl - acc) + 1;
      memmove(acc, nl + 1, len - used);
      len -= used;
      if (match) return 0;
    }
    if (len == sizeof acc) len = 0; /* no newline in a full buffer: noise */
    double left = end - now();
    if (left <= 0) return -1;
    struct pollfd p = {.fd = 0, .events = POLLIN};
    int r = poll(&p, 1, (int)(left * 1000) + 1);
    if (r < 0 && errno != EINTR) die("poll");
    if (r <= 0) continue;
    ssize_t n = read(0, acc + len, sizeof acc - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("read");
    len += (size_t)n;
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

struct stats {
  unsigned n, lost;
  double p50, p99, max;
};

static int phase(const char *name, unsigned n, double *samples, struct stats *st) {
  char line[64];
  memset(st, 0, sizeof *st);
  for (unsigned i = 0; i < n; i++) {
    int l = snprintf(line, sizeof line, "@@P%s-%u", name, i);
    char out[72];
    memcpy(out, line, (size_t)l);
    out[l] = '\n';
    double t0 = now();
    write_all(out, (size_t)l + 1);
    if (await_line(line, 10) < 0) {
      if (++st->lost > 3) return -1;
      continue;
    }
    samples[st->n++] = (now() - t0) * 1e6;
  }
  qsort(samples, st->n, sizeof *samples, cmp_double);
  if (st->n > 0) {
    /* Nearest rank. */
    st->p50 = samples[(st->n * 50 + 99) / 100 - 1];
    st->p99 = samples[(st->n * 99 + 99) / 100 - 1];
    st->max = samples[st->n - 1];
  }
  return 0;
}

static int rtt(unsigned n, const char *load) {
  struct termios saved, raw;
  if (tcgetattr(0, &saved) < 0) die("tcgetattr");
  raw = saved;
  cfmakeraw(&raw);
  if (tcsetattr(0, TCSANOW, &raw) < 0) die("tcsetattr");
  double *samples = calloc(n ? n : 1, sizeof *samples);
  if (!samples) die("calloc");

  struct stats idle, loaded;
  int failed = phase("idle", n, samples, &idle);

  unsigned long long before[4], after[4];
  double t0 = 0, t1 = 0;
  if (!failed) {
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
      setpgid(0, 0);
      execl("/bin/sh", "sh", "-c", load, (char *)NULL);
      _exit(127);
    }
    setpgid(child, child);
    sleep(2);
    disk_stat(before);
    t0 = now();
    failed = phase("loaded", n, samples, &loaded);
    t1 = now();
    disk_stat(after);
    kill(-child, SIGKILL);
    while (waitpid(child, NULL, 0) < 0 && errno == EINTR) {
    }
  }
  tcsetattr(0, TCSANOW, &saved);
  if (failed) {
    fprintf(stderr, "\nconbench: more than 3 round trips lost\n");
    return 1;
  }
  double s = t1 - t0;
  printf("\n{\"rtt\":{");
  const char *names[2] = {"idle", "loaded"};
  struct stats *sts[2] = {&idle, &loaded};
  for (int k = 0; k < 2; k++)
    printf("%s\"%s\":{\"n\":%u,\"lost\":%u,\"p50us\":%.0f,\"p99us\":%.0f,\"maxus\":%.0f}", k ? "," : "", names[k],
           sts[k]->n, sts[k]->lost, sts[k]->p50, sts[k]->p99, sts[k]->max);
  printf("},\"load\":{\"seconds\":%.3f,\"reads\":%llu,\"readMB\":%.3f,\"writes\":%llu,\"writeMB\":%.3f}}\n", s,
         after[0] - before[0], (after[1] - before[1]) * 512 / 1e6, after[2] - before[2],
         (after[3] - before[3]) * 512 / 1e6);
  return 0;
}

static int hwrng(long long want, double seconds) {
  int fd = open("/dev/hwrng", O_RDONLY);
  if (fd < 0) die("/dev/hwrng");
  static char buf[4096];
  long long got = 0;
  double t0 = now(), t = t0;
  while (got < want && t - t0 < seconds) {
    size_t ask = want - got < (long long)sizeof buf ? (size_t)(want - got) : sizeof buf;
    ssize_t n = read(fd, buf, ask);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("read /dev/hwrng");
    got += n;
    t = now();
  }
  printf("{\"hwrng\":{\"bytes\":%lld,\"seconds\":%.3f,\"mbps\":%.4f}}\n", got, t - t0, got / (t - t0) / 1e6);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "rtt") == 0) return rtt((unsigned)atoi(argv[2]), argv[3]);
  if ((argc == 3 || argc == 4) && strcmp(argv[1], "hwrng") == 0)
    return hwrng(atoll(argv[2]), argc == 4 ? atof(argv[3]) : 10);
  fprintf(stderr, "usage: conbench rtt N 'LOAD COMMAND' | conbench hwrng BYTES [SECONDS]\n");
  return 2;
}
