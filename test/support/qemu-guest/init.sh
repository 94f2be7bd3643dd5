#!/bin/sh
# /init of the Linux guest booted by test/qemu-guest/linux-guest.test.ts (busybox ash).
# It drives our vfio-user devices from inside the guest and prints one result
# per line as "VU: <key> <values...>"; "VU: WAIT <tag>" asks the host to act
# and waits for the line "go <tag>" on the console. Parameters come from the
# kernel command line (unknown NAME=value pairs become init's environment):
#   VU_GPIO VU_MEM VU_DMA VU_VICTIM  where each device is: a glob under /sys/bus/pci/devices
#   VU_HOTPLUG   name of the device the host hot-plugs after boot (gpio), or none
#   VU_SCRATCH   physical address of 1 MiB of RAM reserved with memmap= (DMA, MSI-X targets)
#   VU_MODULES   modules to insmod from /lib/modules, in order, comma-separated
#   VU_VFIO      set: also drive the DMA engine through vfio-pci with /bin/vfio-dma

/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
stty -echo 2>/dev/null

say() { echo "VU: $*"; }
fail() { say "FAIL $*"; }
hex() { printf '0x%x' "$1"; }

# Waits for the host: prints WAIT tag, reads "go tag" from the console.
wait_host() {
  say "WAIT $1"
  read -r reply
  [ "$reply" = "go $1" ] || fail "host answered '$reply' to $1"
}

# Polls "$@" every 50 ms, at most $LIMIT times (default 400: 20 s).
poll() {
  n=0
  while ! "$@"; do
    n=$((n + 1))
    [ "$n" -ge "${LIMIT:-400}" ] && return 1
    sleep 0.05
  done
}

# The bytes of $1 as $2 little-endian bytes, on stdout.
le_bytes() {
  v=$1 s='' i=0
  while [ "$i" -lt "$2" ]; do
    s="$s\\$(printf %03o $((v & 255)))"
    v=$((v >> 8)) i=$((i + 1))
  done
  printf "$s"
}

# file offset width: one aligned read of width bytes (config space, I/O BARs), decimal.
frd() { dd if="$1" bs="$3" skip=$(($2 / $3)) count=1 2>/dev/null | od -An -tu"$3" | tr -d ' \n'; }
# file offset value width: one aligned write (dd gathers the bytes into one write of width).
fwr() { le_bytes "$3" "$4" | dd of="$1" ibs=1 count="$4" obs="$4" seek=$(($2 / $4)) conv=notrunc 2>/dev/null; }
# Memory-mapped registers and RAM through /dev/mem.
mrd() { printf '%d' "$(devmem "$1" 32)"; }
mwr() { devmem "$1" 32 "$2"; }

# The sysfs directory of the device at $1 (a glob under /sys/bus/pci/devices), if enumerated.
find_dev() {
  for d in /sys/bus/pci/devices/$1; do
    [ -e "$d/vendor" ] && { echo "$d"; return 0; }
  done
  return 1
}

# Start address of BAR $2 of device dir $1 (decimal; 0 when unassigned).
bar() { printf '%d' "$(sed -n "$(($2 + 1))p" "$1/resource" | cut -d' ' -f1)"; }

# Prints the identity and BARs of device dir $2 under name $1.
describe() {
  say "dev $1 $(basename "$2") $(cat "$2/vendor") $(cat "$2/device") $(cat "$2/class")"
  i=0
  while read -r start end flags; do
    [ "$((end))" -ne 0 ] && say "bar $1 $i $start $end $flags"
    i=$((i + 1))
  done < "$2/resource"
}

# Sets bits $2 in the Command register of device dir $1.
command_set() { fwr "$1/config" 4 $(($(frd "$1/config" 4 2) | $2)) 2; }

# Config-space offset of capability id $2 of device dir $1 (0 if absent).
find_cap() {
  p=$(($(frd "$1/config" 0x34 1) & 0xfc))
  while [ "$p" -ne 0 ]; do
    [ "$(frd "$1/config" "$p" 1)" -eq $(($2)) ] && { echo "$p"; return; }
    p=$(($(frd "$1/config" $((p + 1)) 1) & 0xfc))
  done
  echo 0
}

load_modules() {
  for m in $(echo "$VU_MODULES" | tr ',' ' '); do
    [ "$m" = none ] && continue
    if insmod "/lib/modules/$m.ko" 2>/dev/null; then say "module $m loaded"; else fail "insmod $m"; fi
  done
}

enumerate() {
  for name in gpio mem dma victim; do
    eval "id=\$VU_$(echo $name | tr a-z A-Z)"
    [ -n "$id" ] || continue
    [ "$name" = "$VU_HOTPLUG" ] && continue
    if d=$(find_dev "$id"); then describe "$name" "$d"; else fail "$name $id not enumerated"; fi
  done
}

hotplug() {
  [ -n "$VU_HOTPLUG" ] && [ "$VU_HOTPLUG" != none ] || return 0
  eval "id=\$VU_$(echo "$VU_HOTPLUG" | tr a-z A-Z)"
  find_dev "$id" >/dev/null && fail "$VU_HOTPLUG present before device_add"
  wait_host hotplug
  t0=$(cut -d' ' -f1 /proc/uptime)
  if LIMIT=600 poll find_dev "$id" >/dev/null; then
    d=$(find_dev "$id")
    say "hotplug $VU_HOTPLUG present $t0 $(cut -d' ' -f1 /proc/uptime)"
    describe "$VU_HOTPLUG" "$d"
  else
    fail "hotplug: $VU_HOTPLUG did not appear"
  fi
}

# Memory device: BAR0 is RAM shared with the server, BAR2 the control block.
memory_checks() {
  d=$(find_dev "$VU_MEM") || return 0
  command_set "$d" 2
  b0=$(bar "$d" 0) b2=$(bar "$d" 2)
  say "mem size $(hex "$(mrd $((b2 + 0x0)))")"
  # The guest writes a pattern; the host checks it in the server's memfd.
  for i in 0 1 2 3 4 5 6 7; do mwr $((b0 + i * 0x1000 + i * 4)) $((0xc0de0000 + i)); done
  wait_host mem-guest-wrote
  # The host wrote words at 0x8000 + 4i; the guest reads them back.
  for i in 0 1 2 3; do say "mem host-word $i $(hex "$(mrd $((b0 + 0x8000 + i * 4)))")"; done
  # FILL through BAR2, checked through BAR0.
  mwr $((b2 + 0x08)) 0xa5c3f00f
  mwr $((b2 + 0x0c)) 0x10000
  mwr $((b2 + 0x10)) 0x1000
  mwr $((b2 + 0x14)) 1
  if poll eval '[ $(($(mrd $((b2 + 0x18))) & 3)) -ne 0 ]'; then
    say "mem fill status $(hex "$(mrd $((b2 + 0x18)))") first $(hex "$(mrd $((b0 + 0x10000)))") last $(hex "$(mrd $((b0 + 0x10ffc)))") after $(hex "$(mrd $((b0 + 0x11000)))")"
  else
    fail "mem fill did not complete"
  fi
}

# DMA engine: a COPY job through RAM the kernel does not use; MSI-X vectors
# programmed to write into that RAM, so their delivery is visible without a driver.
dma_checks() {
  d=$(find_dev "$VU_DMA") || return 0
  s=$((VU_SCRATCH)) ring=$((VU_SCRATCH)) msi=$((VU_SCRATCH + 0x800))
  src=$((VU_SCRATCH + 0x1000)) dst=$((VU_SCRATCH + 0x2000))
  b0=$(bar "$d" 0) b4=$(bar "$d" 4)
  command_set "$d" 6
  cap=$(find_cap "$d" 0x11)
  say "dma msix-cap $cap id $(hex "$(mrd "$b0")")"
  [ "$cap" -ne 0 ] || { fail "dma: no MSI-X capability"; return 0; }
  dd if=/dev/urandom of=/dev/mem bs=4096 seek=$((src / 4096)) count=1 conv=notrunc 2>/dev/null || fail "dma: write source"
  dd if=/dev/zero of=/dev/mem bs=4096 seek=$((dst / 4096)) count=1 conv=notrunc 2>/dev/null
  for o in 0 4 8 12 16 20 24 28; do mwr $((ring + o)) 0; done
  mwr "$msi" 0
  mwr $((msi + 0x10)) 0
  # MSI-X table in BAR4: vector 0 writes 0x5a5a0000 at msi, vector 1 0x5a5a0001 at msi + 0x10.
  for v in 0 1; do
    e=$((b4 + v * 16))
    mwr "$e" $((msi + v * 0x10))
    mwr $((e + 4)) 0
    mwr $((e + 8)) $((0x5a5a0000 + v))
    mwr $((e + 12)) 0
  done
  fwr "$d/config" $((cap + 2)) $((($(frd "$d/config" $((cap + 2)) 2) | 0x8000) & ~0x4000)) 2
  say "dma msix-control $(hex "$(frd "$d/config" $((cap + 2)) 2)")"
  # Descriptor 0: COPY 4 KiB src -> dst.
  mwr "$ring" "$src"
  mwr $((ring + 0x08)) "$dst"
  mwr $((ring + 0x10)) 4096
  mwr $((ring + 0x14)) 1
  mwr $((b0 + 0x0c)) "$ring"
  mwr $((b0 + 0x10)) 0
  mwr $((b0 + 0x14)) 4
  mwr $((b0 + 0x04)) 1
  mwr $((b0 + 0x1c)) 1
  poll eval '[ $(mrd $((ring + 0x1c))) -ne 0 ]' || fail "dma: descriptor not completed"
  poll eval '[ $(mrd $msi) -ne 0 ]' || fail "dma: no MSI-X write for vector 0"
  say "dma desc status $(hex "$(mrd $((ring + 0x1c)))") checksum $(hex "$(mrd $((ring + 0x18)))")"
  say "dma regs head $(mrd $((b0 + 0x18))) completed $(mrd $((b0 + 0x20))) errors $(mrd $((b0 + 0x24))) status $(hex "$(mrd $((b0 + 0x08)))")"
  say "dma msix vector0 $(hex "$(mrd "$msi")") vector1 $(hex "$(mrd $((msi + 0x10)))")"
  m1=$(dd if=/dev/mem bs=4096 skip=$((src / 4096)) count=1 2>/dev/null | md5sum | cut -d' ' -f1)
  m2=$(dd if=/dev/mem bs=4096 skip=$((dst / 4096)) count=1 2>/dev/null | md5sum | cut -d' ' -f1)
  say "dma md5 $m1 $m2 src $(hex "$src") dst $(hex "$dst")"
  wait_host dma-checked
}

# DMA engine again, now through the guest kernel's vfio-pci behind QEMU's Intel
# IOMMU (iommu=pt left it in an identity domain until now): vfio-dma maps a
# buffer at an IOVA of its choice and waits for MSI-X vector 0 on an eventfd.
vfio_checks() {
  [ -n "$VU_VFIO" ] || return 0
  d=$(find_dev "$VU_DMA") || return 0
  echo vfio-pci > "$d/driver_override"
  echo "$(basename "$d")" > /sys/bus/pci/drivers_probe
  drv=$(basename "$(readlink "$d/driver" 2>/dev/null)")
  [ "$drv" = vfio-pci ] || { fail "vfio: the DMA engine is bound to '$drv', not vfio-pci"; return 0; }
  vfio-dma "$(basename "$d")" || fail "vfio-dma exited with $?"
}

# GPIO card: registers in its I/O BAR2 (sysfs resource2), INTx through uio_pci_generic:
# reading /dev/uioN returns the interrupt count; the driver masks INTx with the
# Command register's Interrupt Disable bit and user space clears it again.
gpio_checks() {
  d=$(find_dev "$VU_GPIO") || return 0
  r="$d/resource2"
  command_set "$d" 1
  fwr "$r" 0x10 0xa55a 4
  wait_host gpio-outputs
  [ -d /sys/bus/pci/drivers/uio_pci_generic ] || { say "gpio no-uio"; return 0; }
  echo uio_pci_generic > "$d/driver_override"
  echo "$(basename "$d")" > /sys/bus/pci/drivers_probe
  u=$(ls "$d/uio" 2>/dev/null)
  [ -n "$u" ] || { fail "gpio: uio_pci_generic did not bind"; return 0; }
  say "gpio uio $u irq $(cat "$d/irq")"
  fwr "$r" 0x18 3 4
  exec 3<"/dev/$u"
  for round in 1 2; do
    wait_host "gpio-irq-$round"
    count=$(timeout 20 dd bs=4 count=1 <&3 2>/dev/null | od -An -tu4 | tr -d ' \n')
    say "gpio irq $round count ${count:-none} status $(hex "$(frd "$r" 0x1c 4)") input $(hex "$(frd "$r" 0x14 4)")"
    fwr "$r" 0x1c 0xffff 4
    # uio_pci_generic masked INTx with Interrupt Disable; user space unmasks it (uio-howto).
    fwr "$d/config" 4 $(($(frd "$d/config" 4 2) & ~0x400)) 2
  done
  exec 3<&-
  say "gpio after status $(hex "$(frd "$r" 0x1c 4)") irq-status-byte $(hex "$(frd "$r" 6 1)")"
}

# A device whose server the host kills while the guest runs.
victim_checks() {
  d=$(find_dev "$VU_VICTIM") || return 0
  command_set "$d" 2
  b0=$(bar "$d" 0) b2=$(bar "$d" 2)
  mwr "$b0" 0x600df00d
  say "victim before size $(hex "$(mrd "$b2")") bar0 $(hex "$(mrd "$b0")")"
  wait_host victim-killed
  # A region QEMU reaches by message (BAR2) and one it mmapped (BAR0), with the uptime around each BAR2 access.
  t0=$(cut -d' ' -f1 /proc/uptime)
  v1=$(mrd "$b2")
  t1=$(cut -d' ' -f1 /proc/uptime)
  v2=$(mrd "$b2")
  t2=$(cut -d' ' -f1 /proc/uptime)
  mwr $((b2 + 0x08)) 0x12345678
  t3=$(cut -d' ' -f1 /proc/uptime)
  mwr "$b0" 0x0badf00d
  say "victim after size $(hex "$v1") again $(hex "$v2") bar0 $(hex "$(mrd "$b0")") uptimes $t0 $t1 $t2 $t3"
  say "victim alive $(cut -d' ' -f1 /proc/uptime)"
  wait_host victim-status
}

say "boot $(cut -d' ' -f1 /proc/uptime) kernel $(uname -r)"
load_modules
enumerate
hotplug
memory_checks
dma_checks
vfio_checks
gpio_checks
victim_checks
say "END $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
