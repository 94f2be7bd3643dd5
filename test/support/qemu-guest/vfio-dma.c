/*
 * Runs inside the Linux guest of test/qemu-guest/linux-guest.test.ts (built
 * there with `gcc -static`): a user-space driver for our DMA engine through the
 * guest kernel's vfio-pci, behind QEMU's emulated Intel IOMMU. It maps one
 * buffer for DMA (VFIO_IOMMU_MAP_DMA: the guest's IOMMU page tables, which
 * QEMU forwards to the vfio-user server as DMA_MAP), gives MSI-X vectors 0 and
 * 1 an eventfd each, runs one COPY descriptor and waits for vector 0.
 *
 * Usage: vfio-dma <pci address, e.g. 0000:00:04.0>
 * Prints "VU: vfio <key> <values>" lines (the test's result format) and
 * "VU: FAIL vfio <what>" on an error, then "VU: WAIT vfio-mapped" and waits for
 * the host's "go vfio-mapped" on stdin before it unmaps; exit status 0 when the
 * job completed.
 *
 * Register map: docs/devices.md, "DMA engine".
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define IOVA 0x10000000ULL /* where the guest driver puts its buffer in the device's address space */
#define BUF_SIZE 0x4000    /* ring | source | destination | spare */
#define COPY_LEN 0x1000
#define REG_CONTROL 0x04
#define REG_STATUS 0x08
#define REG_RING_LO 0x0c
#define REG_RING_HI 0x10
#define REG_RING_SIZE 0x14
#define REG_HEAD 0x18
#define REG_TAIL 0x1c
#define REG_COMPLETED 0x20

static int fail(const char *what) {
  printf("VU: FAIL vfio %s: %s\n", what, strerror(errno));
  return 1;
}

static uint32_t fnv1a(const uint8_t *p, size_t n) {
  uint32_t h = 0x811c9dc5u;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x01000193u;
  return h;
}

struct dev {
  int fd;
  uint64_t bar0, config;
};

static int reg_write(struct dev *d, uint32_t off, uint32_t v) {
  return pwrite(d->fd, &v, 4, (off_t)(d->bar0 + off)) == 4 ? 0 : -1;
}

static uint32_t reg_read(struct dev *d, uint32_t off) {
  uint32_t v = 0xffffffffu;
  if (pread(d->fd, &v, 4, (off_t)(d->bar0 + off)) != 4) return 0xffffffffu;
  return v;
}

static int region_offset(int fd, uint32_t index, uint64_t *offset) {
  struct vfio_region_info info = {.argsz = sizeof(info), .index = index};
  if (ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, &info) < 0) return -1;
  *offset = info.offset;
  return 0;
}

/* Opens the container and the group of `bdf`, maps `buf` at IOVA, returns the device fd. */
static int open_device(const char *bdf, void *buf) {
  char path[PATH_MAX], link[PATH_MAX];
  snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", bdf);
  ssize_t n = readlink(path, link, sizeof(link) - 1);
  if (n < 0) return fail("iommu_group"), -1;
  link[n] = 0;
  int container = open("/dev/vfio/vfio", O_RDWR);
  if (container < 0) return fail("open /dev/vfio/vfio"), -1;
  if (ioctl(container, VFIO_GET_API_VERSION) != VFIO_API_VERSION) return fail("API version"), -1;
  snprintf(path, sizeof(path), "/dev/vfio/%s", basename(link));
  int group = open(path, O_RDWR);
  if (group < 0) return fail("open group"), -1;
  struct vfio_group_status status = {.argsz = sizeof(status)};
  if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) < 0 || !(status.flags & VFIO_GROUP_FLAGS_VIABLE)) return fail("group not viable"), -1;
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) < 0) return fail("SET_CONTAINER"), -1;
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU) < 0) return fail("SET_IOMMU"), -1;
  struct vfio_iommu_type1_dma_map map = {
      .argsz = sizeof(map), .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
      .vaddr = (uintptr_t)buf, .iova = IOVA, .size = BUF_SIZE};
  if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map) < 0) return fail("MAP_DMA"), -1;
  int fd = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
  if (fd < 0) return fail("GET_DEVICE_FD"), -1;
  printf("VU: vfio group %s mapped 0x%llx+0x%x\n", basename(link), IOVA, BUF_SIZE);
  return fd;
}

/* Bus master on, one eventfd per MSI-X vector. */
static int enable(struct dev *d, int efd[2]) {
  uint16_t cmd;
  if (pread(d->fd, &cmd, 2, (off_t)(d->config + 4)) != 2) return fail("read Command");
  cmd |= 0x6;
  if (pwrite(d->fd, &cmd, 2, (off_t)(d->config + 4)) != 2) return fail("write Command");
  char raw[sizeof(struct vfio_irq_set) + 2 * sizeof(int32_t)];
  struct vfio_irq_set *set = (struct vfio_irq_set *)raw;
  *set = (struct vfio_irq_set){.argsz = sizeof(raw), .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                               .index = VFIO_PCI_MSIX_IRQ_INDEX, .start = 0, .count = 2};
  for (int i = 0; i < 2; i++) {
    efd[i] = eventfd(0, EFD_NONBLOCK);
    if (efd[i] < 0) return fail("eventfd");
  }
  memcpy(set->data, efd, 2 * sizeof(int32_t));
  if (ioctl(d->fd, VFIO_DEVICE_SET_IRQS, set) < 0) return fail("SET_IRQS MSI-X");
  return 0;
}

/* Waits up to `ms` for eventfd `fd`; returns its count (0 on timeout). */
static uint64_t wait_irq(int fd, int ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  uint64_t count = 0;
  if (poll(&p, 1, ms) == 1 && read(fd, &count, 8) != 8) count = 0;
  return count;
}

/* The guest kernel's count for the interrupt named `name` in /proc/interrupts (-1 if absent). */
static long kernel_irq_count(const char *name) {
  FILE *f = fopen("/proc/interrupts", "r");
  char line[512];
  long count = -1;
  while (f && fgets(line, sizeof(line), f)) {
    if (strstr(line, name) && sscanf(line, "%*s %ld", &count) == 1) break;
    count = -1;
  }
  if (f) fclose(f);
  return count;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc != 2) return fprintf(stderr, "usage: vfio-dma <pci address>\n"), 2;
  uint8_t *buf = mmap(NULL, BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (buf == MAP_FAILED) return fail("mmap");
  struct dev d = {.fd = open_device(argv[1], buf)};
  if (d.fd < 0) return 1;
  if (region_offset(d.fd, VFIO_PCI_BAR0_REGION_INDEX, &d.bar0) < 0 || region_offset(d.fd, VFIO_PCI_CONFIG_REGION_INDEX, &d.config) < 0)
    return fail("REGION_INFO");
  int efd[2];
  if (enable(&d, efd)) return 1;
  uint8_t *ring = buf, *src = buf + 0x1000, *dst = buf + 0x2000;
  int rnd = open("/dev/urandom", O_RDONLY);
  if (rnd < 0 || read(rnd, src, COPY_LEN) != COPY_LEN) return fail("urandom");
  close(rnd);
  uint64_t desc[4] = {IOVA + 0x1000, IOVA + 0x2000, COPY_LEN | (1ULL << 32), 0}; /* src, dst, length | flags COPY << 32 */
  memcpy(ring, desc, sizeof(desc));
  __sync_synchronize();
  /* CONTROL.RESET first: the ring registers are writable only while the engine is disabled and idle. */
  if (reg_write(&d, REG_CONTROL, 2) || reg_write(&d, REG_CONTROL, 0) || reg_write(&d, REG_RING_LO, (uint32_t)IOVA) || reg_write(&d, REG_RING_HI, (uint32_t)(IOVA >> 32)) || reg_write(&d, REG_RING_SIZE, 4) ||
      reg_write(&d, REG_CONTROL, 1) || reg_write(&d, REG_TAIL, 1))
    return fail("BAR0 write");
  uint64_t v0 = wait_irq(efd[0], 20000);
  uint64_t v1 = wait_irq(efd[1], 0);
  uint32_t status, checksum;
  memcpy(&checksum, ring + 0x18, 4);
  memcpy(&status, ring + 0x1c, 4);
  printf("VU: vfio msix vector0 %llu vector1 %llu kernel %ld\n", (unsigned long long)v0, (unsigned long long)v1, kernel_irq_count("vfio-msix[0]"));
  printf("VU: vfio desc status 0x%x checksum 0x%x expected 0x%x copy %s\n", status, checksum, fnv1a(src, COPY_LEN),
         memcmp(src, dst, COPY_LEN) == 0 ? "equal" : "differs");
  printf("VU: vfio regs head %u completed %u status 0x%x\n", reg_read(&d, REG_HEAD), reg_read(&d, REG_COMPLETED), reg_read(&d, REG_STATUS));
  /* The host reads the buffers through the device's DMA mappings while they are still mapped. */
  char reply[64] = "";
  printf("VU: WAIT vfio-mapped\n");
  if (!fgets(reply, sizeof(reply), stdin) || strcmp(reply, "go vfio-mapped\n") != 0) printf("VU: FAIL vfio host answered '%s'\n", reply);
  return v0 > 0 && status == 1 ? 0 : 1;
}
