/** QEMU 10.2.2's VERSION request, byte for byte, for tests that stand in for QEMU's client. */
import { wb } from './wire-builder.js';

/** QEMU 10.2.2's capabilities JSON (hw/vfio-user/proxy.c caps_json; a 214-byte message). */
export const QEMU_CAPS_JSON =
  '{"capabilities": {"max_msg_fds": 16, "max_data_xfer_size": 1048576, "pgsizes": 4096, "max_dma_maps": 65535, ' +
  '"migration": {"pgsize": 4096, "max_bitmap_size": 268435456}, "write_multiple": true}}';

/** The VERSION payload QEMU 10.2.2 sends: major 0, minor 0, its JSON. */
export const qemuVersionRequest = (): Uint8Array => wb().u16(0).u16(0).cstr(QEMU_CAPS_JSON).build();
