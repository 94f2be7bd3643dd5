/**
 * Encode/decode throughput of REGION_READ / REGION_WRITE messages (header +
 * payload, 4 data bytes), through the real codec. The reference in the same run
 * is a hand-written DataView encoder/decoder of the same bytes, the least any
 * JavaScript codec can cost.
 */
import { Command, HEADER_SIZE } from '../src/protocol/constants.js';
import { decodeHeader, encodeMessage } from '../src/protocol/header.js';
import {
  decodeRegionReadRequest,
  decodeRegionWriteRequest,
  encodeRegionAccess,
  encodeRegionAccessWithData,
} from '../src/protocol/region-access.js';

/** Messages per second for each case. */
export interface CodecResult {
  encodeRegionRead: number;
  decodeRegionRead: number;
  encodeRegionWrite: number;
  decodeRegionWrite: number;
  rawDataViewEncode: number;
  rawDataViewDecode: number;
}

function rate(seconds: number, body: (i: number) => unknown): number {
  let sink: unknown;
  for (let i = 0; i < 20_000; i++) sink = body(i); // warm-up
  let n = 0;
  const start = process.hrtime.bigint();
  const limit = BigInt(Math.round(seconds * 1e9));
  let elapsed = 0n;
  while (elapsed < limit) {
    for (let k = 0; k < 1000; k++) sink = body(n + k);
    n += 1000;
    elapsed = process.hrtime.bigint() - start;
  }
  if (sink === Symbol.for('never')) console.log(sink);
  return Math.round(n / (Number(elapsed) / 1e9));
}

/** Runs each case for `seconds`. */
export function runCodecBench(o: { seconds: number; log: boolean }): CodecResult {
  const data = Uint8Array.of(1, 2, 3, 4);
  const read = encodeMessage({ msgId: 1, cmd: Command.REGION_READ, flags: 0 }, encodeRegionAccess({ offset: 0x40n, region: 0, count: 4 }));
  const write = encodeMessage(
    { msgId: 2, cmd: Command.REGION_WRITE, flags: 0 },
    encodeRegionAccessWithData({ offset: 0x40n, region: 0, count: 4, data }),
  );
  const raw = new Uint8Array(32);
  const rawView = new DataView(raw.buffer);
  const result: CodecResult = {
    encodeRegionRead: rate(o.seconds, (i) =>
      encodeMessage({ msgId: i & 0xffff, cmd: Command.REGION_READ, flags: 0 }, encodeRegionAccess({ offset: BigInt(i & 0xff), region: 0, count: 4 })),
    ),
    decodeRegionRead: rate(o.seconds, () => decodeRegionReadRequest(read.subarray(HEADER_SIZE, decodeHeader(read).msgSize))),
    encodeRegionWrite: rate(o.seconds, (i) =>
      encodeMessage(
        { msgId: i & 0xffff, cmd: Command.REGION_WRITE, flags: 0 },
        encodeRegionAccessWithData({ offset: BigInt(i & 0xff), region: 0, count: 4, data }),
      ),
    ),
    decodeRegionWrite: rate(o.seconds, () => decodeRegionWriteRequest(write.subarray(HEADER_SIZE, decodeHeader(write).msgSize))),
    rawDataViewEncode: rate(o.seconds, (i) => {
      const out = new Uint8Array(32);
      const dv = new DataView(out.buffer);
      dv.setUint16(0, i & 0xffff, true);
      dv.setUint16(2, 9, true);
      dv.setUint32(4, 32, true);
      dv.setBigUint64(16, BigInt(i & 0xff), true);
      dv.setUint32(24, 0, true);
      dv.setUint32(28, 4, true);
      return out;
    }),
    rawDataViewDecode: rate(o.seconds, () => {
      raw.set(read);
      return { id: rawView.getUint16(0, true), offset: rawView.getBigUint64(16, true), region: rawView.getUint32(24, true), count: rawView.getUint32(28, true) };
    }),
  };
  if (o.log) printCodec(result);
  return result;
}

function printCodec(r: CodecResult): void {
  const m = (x: number): string => `${(x / 1e6).toFixed(2).padStart(6)} M msg/s`;
  console.log('\nCodec throughput (REGION_READ request / REGION_WRITE request with 4 data bytes, header included)');
  console.log(`  encode REGION_READ    ${m(r.encodeRegionRead)}`);
  console.log(`  decode REGION_READ    ${m(r.decodeRegionRead)}`);
  console.log(`  encode REGION_WRITE   ${m(r.encodeRegionWrite)}`);
  console.log(`  decode REGION_WRITE   ${m(r.decodeRegionWrite)}`);
  console.log(`  reference: raw DataView encode ${m(r.rawDataViewEncode)}, decode ${m(r.rawDataViewDecode)}`);
}
