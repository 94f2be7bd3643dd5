import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError, ProtocolError } from '../../src/errors.js';
import {
  Errno,
  decodeVersion,
  encodeVersion,
  formatCapabilitiesJson,
  parseCapabilitiesJson,
  resolveCapabilities,
  type Capabilities,
} from '../../src/protocol/index.js';
import { wb } from '../support/wire-builder.js';

const isEinval = (e: unknown): boolean => e instanceof ProtocolError && e.errno === Errno.EINVAL;
const withJson = (json: string) => wb().u16(0).u16(2).cstr(json).build();

describe('VERSION JSON acceptance', () => {
  const accepted: Array<[string, string, Capabilities | undefined]> = [
    ['empty object', '{}', undefined],
    ['no capabilities key', '{"other":1}', undefined],
    ['a non-object top level (json-c ignores it)', '[1,2]', undefined],
    ['empty capabilities', '{"capabilities":{}}', {}],
    ['max_msg_fds 0', '{"capabilities":{"max_msg_fds":0}}', { maxMsgFds: 0 }],
    ['max_msg_fds 1024', '{"capabilities":{"max_msg_fds":1024}}', { maxMsgFds: 1024 }],
    ['big pgsizes mask', '{"capabilities":{"pgsizes":18446744073709547520}}', { pgsizes: 0xffff_ffff_ffff_f000n }],
    ['twin_socket false', '{"capabilities":{"twin_socket":{"supported":false}}}', { twinSocket: { supported: false } }],
    ['unknown members kept', '{"capabilities":{"x":[1,{"y":null}],"migration":{"z":"s"}}}',
      { migration: { extra: { z: 's' } }, extra: { x: [1, { y: null }] } }],
    ['__proto__ is kept as data', '{"capabilities":{"__proto__":{"polluted":true}}}',
      { extra: JSON.parse('{"__proto__":{"polluted":true}}') as Record<string, unknown> }],
    ['whitespace and UTF-8', ' {\n"capabilities" : {"x-name":"é"}}\t', { extra: { 'x-name': 'é' } }],
  ];
  for (const [name, json, caps] of accepted) {
    it(`accepts ${name}`, () => {
      const v = decodeVersion(withJson(json));
      assert.deepStrictEqual(v.capabilities, caps);
      assert.equal(Object.hasOwn(v, 'capabilities'), caps !== undefined);
    });
  }

  it('does not pollute Object.prototype', () => {
    decodeVersion(withJson('{"capabilities":{"__proto__":{"polluted":true}}}'));
    assert.equal((Object.prototype as Record<string, unknown>)['polluted'], undefined);
  });

  it('ignores bytes between the first NUL and the final NUL (as json-c does)', () => {
    const v = decodeVersion(wb().u16(0).u16(1).cstr('{"capabilities":{"max_msg_fds":3}}').str('junk').u8(0).build());
    assert.deepStrictEqual(v, { major: 0, minor: 1, capabilities: { maxMsgFds: 3 } });
  });
});

describe('VERSION JSON rejection (EINVAL)', () => {
  const rejected: Array<[string, Uint8Array]> = [
    ['JSON without NUL', wb().u16(0).u16(2).str('{}').build()],
    ['a lone NUL (empty JSON)', wb().u16(0).u16(2).u8(0).build()],
    ['unparsable JSON', withJson('{"capabilities":')],
    ['trailing garbage inside the text', withJson('{} x')],
    ['invalid UTF-8', wb().u16(0).u16(2).bytes([0x7b, 0xff, 0x7d, 0]).build()],
    ['capabilities not an object', withJson('{"capabilities":[]}')],
    ['capabilities null', withJson('{"capabilities":null}')],
    ['max_msg_fds a string', withJson('{"capabilities":{"max_msg_fds":"8"}}')],
    ['max_msg_fds negative', withJson('{"capabilities":{"max_msg_fds":-1}}')],
    ['max_msg_fds 1025', withJson('{"capabilities":{"max_msg_fds":1025}}')],
    ['max_msg_fds fractional', withJson('{"capabilities":{"max_msg_fds":1.5}}')],
    ['max_data_xfer_size 0', withJson('{"capabilities":{"max_data_xfer_size":0}}')],
    ['max_data_xfer_size huge', withJson('{"capabilities":{"max_data_xfer_size":1e300}}')],
    ['max_data_xfer_size boolean', withJson('{"capabilities":{"max_data_xfer_size":true}}')],
    ['max_dma_maps negative', withJson('{"capabilities":{"max_dma_maps":-5}}')],
    ['pgsizes beyond u64', withJson('{"capabilities":{"pgsizes":1e20}}')],
    ['pgsizes a string', withJson('{"capabilities":{"pgsizes":"4096"}}')],
    ['migration not an object', withJson('{"capabilities":{"migration":4096}}')],
    ['migration.pgsize 0', withJson('{"capabilities":{"migration":{"pgsize":0}}}')],
    ['migration.pgsize a string', withJson('{"capabilities":{"migration":{"pgsize":"4k"}}}')],
    ['twin_socket not an object', withJson('{"capabilities":{"twin_socket":true}}')],
    ['twin_socket.supported a number', withJson('{"capabilities":{"twin_socket":{"supported":1}}}')],
    ['twin_socket.fd_index negative', withJson('{"capabilities":{"twin_socket":{"supported":true,"fd_index":-1}}}')],
    ['write_multiple a string', withJson('{"capabilities":{"write_multiple":"yes"}}')],
  ];
  for (const [name, payload] of rejected) {
    it(`rejects ${name}`, () => {
      assert.throws(() => decodeVersion(payload), isEinval);
    });
  }

  it('deeply nested JSON either parses or fails with EINVAL, never a RangeError', () => {
    for (const depth of [10_000, 500_000]) {
      const payload = withJson('{"capabilities":{"x":' + '['.repeat(depth) + ']'.repeat(depth) + '}}');
      try {
        decodeVersion(payload);
      } catch (e) {
        assert.ok(isEinval(e), String(e));
      }
    }
  });
});

describe('capabilities formatting and defaults', () => {
  it('formats in a fixed member order, compactly', () => {
    const json = formatCapabilitiesJson({
      extra: { 'x-a': 1 }, writeMultiple: false, twinSocket: { fdIndex: 0, supported: true }, migration: { pgsize: 4096 },
      pgsizes: 0xffff_ffff_ffff_f000n, maxDmaMaps: 10, maxDataXferSize: 4096, maxMsgFds: 2,
    });
    assert.equal(json, '{"capabilities":{"max_msg_fds":2,"max_data_xfer_size":4096,"max_dma_maps":10,' +
      '"pgsizes":18446744073709547520,"migration":{"pgsize":4096},"twin_socket":{"supported":true,"fd_index":0},' +
      '"write_multiple":false,"x-a":1}}');
    assert.deepStrictEqual(parseCapabilitiesJson(json), {
      maxMsgFds: 2, maxDataXferSize: 4096, maxDmaMaps: 10, pgsizes: 0xffff_ffff_ffff_f000n, migration: { pgsize: 4096 },
      twinSocket: { supported: true, fdIndex: 0 }, writeMultiple: false, extra: { 'x-a': 1 },
    });
  });

  it('round-trips extension members through encode/decode', () => {
    const caps: Capabilities = { maxMsgFds: 1, extra: { precopy_info: { supported: true }, deadline: { max_ms: 300 } } };
    assert.deepStrictEqual(decodeVersion(encodeVersion({ major: 0, minor: 2, capabilities: caps })).capabilities, caps);
  });

  it('refuses to encode invalid capabilities', () => {
    const bad = (e: unknown) => e instanceof InvalidArgumentError;
    assert.throws(() => formatCapabilitiesJson({ maxMsgFds: 1.5 }), bad);
    assert.throws(() => formatCapabilitiesJson({ pgsizes: -1n }), bad);
    assert.throws(() => formatCapabilitiesJson({ extra: { max_msg_fds: 3 } }), bad);
    assert.throws(() => formatCapabilitiesJson({ extra: { x: 1n } }), bad);
    assert.throws(() => formatCapabilitiesJson({ extra: { x: undefined } }), bad);
    assert.throws(() => encodeVersion({ major: 0x10000, minor: 0 }), bad);
  });

  it('resolveCapabilities applies the spec defaults', () => {
    assert.deepStrictEqual(resolveCapabilities(undefined), {
      maxMsgFds: 1, maxDataXferSize: 1048576, maxDmaMaps: 65535, pgsizes: 4096n, migration: undefined,
      twinSocket: { supported: false, fdIndex: undefined }, writeMultiple: false, extra: {},
    });
    const r = resolveCapabilities({ maxMsgFds: 0, migration: {}, twinSocket: { supported: true, fdIndex: 0 } });
    assert.equal(r.maxMsgFds, 0);
    assert.deepStrictEqual(r.migration, { pgsize: undefined });
    assert.deepStrictEqual(r.twinSocket, { supported: true, fdIndex: 0 });
  });
});
