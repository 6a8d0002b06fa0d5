// The C peer of bench/run.mjs: runs the same guest code with raw KVM ioctls.
//   kvm_bench exits CODEFILE      -> one line: exits elapsed_ns
//   kvm_bench roundtrip CODEFILE  -> one line: elapsed_ns
// Guests are real mode at 0x1000 (see test/fixtures/guests.mjs).
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }
static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec;
}

static int notify_fd, irq_fd;
static volatile int stop_worker;

static void *io_worker(void *arg) {
  (void)arg;
  uint64_t v;
  while (!stop_worker) {
    if (read(notify_fd, &v, 8) != 8) break;
    if (stop_worker) break;
    v = 1;
    if (write(irq_fd, &v, 8) != 8) break;
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: kvm_bench exits|roundtrip CODEFILE\n"); return 2; }
  int roundtrip = strcmp(argv[1], "roundtrip") == 0;
  FILE *f = fopen(argv[2], "rb");
  if (!f) die("code");
  uint8_t *mem = mmap(NULL, 0x10000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  size_t n = fread(mem + 0x1000, 1, 0x8000, f);
  fclose(f);
  if (n == 0) die("empty code");

  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("/dev/kvm");
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) die("KVM_CREATE_VM");
  if (roundtrip && ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
  struct kvm_userspace_memory_region r = {.slot = 0, .guest_phys_addr = 0, .memory_size = 0x10000, .userspace_addr = (uint64_t)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) die("KVM_SET_USER_MEMORY_REGION");
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) die("KVM_CREATE_VCPU");
  int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  struct kvm_sregs s;
  ioctl(vcpu, KVM_GET_SREGS, &s);
  s.cs.base = 0; s.cs.selector = 0;
  s.ds.base = 0; s.ds.selector = 0;
  s.es.base = 0; s.es.selector = 0;
  s.ss.base = 0; s.ss.selector = 0;
  if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0) die("KVM_SET_SREGS");
  struct kvm_regs regs;
  memset(&regs, 0, sizeof regs);
  regs.rip = 0x1000; regs.rsp = 0x8000; regs.rflags = 2;
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

  pthread_t worker;
  if (roundtrip) {
    notify_fd = eventfd(0, 0);
    irq_fd = eventfd(0, 0);
    struct kvm_ioeventfd io = {.addr = 0x40, .len = 1, .fd = notify_fd, .flags = KVM_IOEVENTFD_FLAG_PIO};
    if (ioctl(vm, KVM_IOEVENTFD, &io) < 0) die("KVM_IOEVENTFD");
    struct kvm_irqfd irq = {.fd = (uint32_t)irq_fd, .gsi = 5};
    if (ioctl(vm, KVM_IRQFD, &irq) < 0) die("KVM_IRQFD");
    pthread_create(&worker, NULL, io_worker, NULL);
  }
  uint64_t exits = 0, t0 = now_ns();
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
    exits++;
    if (run->exit_reason == KVM_EXIT_HLT) break;
    if (run->exit_reason == KVM_EXIT_IO && run->io.port == 0x10 && roundtrip) break;
    if (run->exit_reason != KVM_EXIT_IO) { fprintf(stderr, "unexpected exit %u\n", run->exit_reason); return 1; }
  }
  uint64_t elapsed = now_ns() - t0;
  if (roundtrip) {
    stop_worker = 1;
    uint64_t one = 1;
    if (write(notify_fd, &one, 8) != 8) die("write");
    pthread_join(worker, NULL);
    printf("%llu\n", (unsigned long long)elapsed);
  } else {
    printf("%llu %llu\n", (unsigned long long)exits, (unsigned long long)elapsed);
  }
  return 0;
}
