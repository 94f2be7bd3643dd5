/**
 * Device Serial Number extended capability (id 0x0003, version 1), 12 bytes,
 * read-only: header, serial number low dword, high dword. `lspci` prints it
 * most significant byte first (`01-23-45-67-89-ab-cd-ef`).
 */
import { InvalidArgumentError } from '../../errors.js';
import { ExtCapabilityId } from '../registers.js';
import { installExtCapHeader, type CapabilityDefinition } from './capability.js';

/** Size of the DSN extended capability. */
export const DSN_SIZE = 12;
const DSN_VERSION = 1;

/** The DSN row of the capability table: present when `serialNumber` is given. */
export const dsnCapability: CapabilityDefinition = {
  name: 'dsn',
  extended: true,
  plan(options) {
    const serial = options.serialNumber;
    if (serial === undefined) return [];
    if (typeof serial !== 'bigint' || serial < 0n || serial >= 1n << 64n) {
      throw new InvalidArgumentError('serialNumber: not a 64-bit unsigned bigint');
    }
    return [
      {
        size: DSN_SIZE,
        install: ({ regs }, offset) => {
          installExtCapHeader(regs, offset, ExtCapabilityId.DSN, DSN_VERSION);
          regs.define(offset + 4, 4, Number(serial & 0xffffffffn));
          regs.define(offset + 8, 4, Number(serial >> 32n));
          return { name: 'dsn', id: ExtCapabilityId.DSN, extended: true, offset, size: DSN_SIZE };
        },
      },
    ];
  },
};
