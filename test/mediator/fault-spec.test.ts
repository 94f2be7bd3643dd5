/**
 * The fault rule syntax: every part parsed, defaults, case-insensitivity, and
 * each malformed part refused EINVAL with a message naming it.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseFaultSpec, MAX_CORRUPT_BYTES } from '../../src/mediator/fault-spec.js';
import { InvalidArgumentError } from '../../src/errors.js';

const EINVAL = 22;

describe('parseFaultSpec: valid rules', () => {
  it('the issue example: REGION_READ:delay=50ms:p=0.1, with defaults for the rest', () => {
    assert.deepEqual(parseFaultSpec('REGION_READ:delay=50ms:p=0.1'), {
      spec: 'REGION_READ:delay=50ms:p=0.1',
      commands: [9],
      fault: { kind: 'delay', ms: 50 },
      probability: 0.1,
      after: 0,
      count: Infinity,
      on: 'request',
      state: undefined,
    });
  });

  it('every option, case-insensitive names, several targets', () => {
    const rule = parseFaultSpec('dma_map,Dma_Unmap:ERROR=ebusy:after=2:count=3:on=Reply:state=stop_copy:p=1');
    assert.deepEqual(rule.commands, [2, 3]);
    assert.deepEqual(rule.fault, { kind: 'error', errno: 16 });
    assert.deepEqual([rule.after, rule.count, rule.on, rule.state, rule.probability], [2, 3, 'reply', 3, 1]);
  });

  it('targets: *, upstream commands, duplicates collapse', () => {
    assert.equal(parseFaultSpec('*:drop').commands, '*');
    assert.deepEqual(parseFaultSpec('DMA_READ,DMA_WRITE,DMA_READ:drop').commands, [11, 12]);
    assert.deepEqual(parseFaultSpec('DEVICE_FEATURE:disconnect').commands, [16]);
  });

  it('durations: ms syntax, a plain number is milliseconds, 0 allowed', () => {
    const ms = (v: string): number => {
      const f = parseFaultSpec(`REGION_READ:delay=${v}`).fault;
      assert.equal(f.kind, 'delay');
      return f.ms;
    };
    assert.deepEqual([ms('50ms'), ms('1.5s'), ms('2m'), ms('250'), ms('0')], [50, 1500, 120_000, 250, 0]);
  });

  it('errnos: a name or a number 1..4096', () => {
    const errno = (v: string): number => {
      const f = parseFaultSpec(`REGION_READ:error=${v}`).fault;
      assert.equal(f.kind, 'error');
      return f.errno;
    };
    assert.deepEqual([errno('EIO'), errno('eagain'), errno('5'), errno('4096'), errno('1')], [5, 11, 5, 4096, 1]);
  });

  it('corrupt: 1 byte by default, or N', () => {
    assert.deepEqual(parseFaultSpec('REGION_READ:corrupt').fault, { kind: 'corrupt', bytes: 1 });
    assert.deepEqual(parseFaultSpec('REGION_READ:corrupt=7:on=reply').fault, { kind: 'corrupt', bytes: 7 });
  });

  it('probabilities 0, 0.5, .25, 1', () => {
    assert.deepEqual(['0', '0.5', '.25', '1', '1.0'].map((p) => parseFaultSpec(`*:drop:p=${p}`).probability), [0, 0.5, 0.25, 1, 1]);
  });
});

describe('parseFaultSpec: malformed rules are EINVAL naming the part', () => {
  const rows: [spec: string, mentions: RegExp][] = [
    ['', /empty spec/],
    ['   ', /empty spec/],
    ['REGION_READ', /no fault after the target/],
    ['REGION_READ:', /no fault after the target/],
    ['REGION_REED:drop', /target 'REGION_REED' is not a command/],
    ['REGION_READ,,DMA_MAP:drop', /target '' is not a command/],
    ['9:drop', /target '9' is not a command/],
    ['REGION_READ:explode', /'explode' is not a fault/],
    ['REGION_READ:delay', /delay needs a duration/],
    ['REGION_READ:delay=fast', /delay 'fast' is not a duration/],
    ['REGION_READ:delay=-5ms', /delay '-5ms' is not a duration/],
    ['REGION_READ:delay=3000000000', /longer than/],
    ['REGION_READ:error', /error needs an errno/],
    ['REGION_READ:error=EWHAT', /error 'EWHAT' is not an errno name/],
    ['REGION_READ:error=0', /error 0 is outside 1\.\.4096/],
    ['REGION_READ:error=4097', /error 4097 is outside/],
    ['REGION_READ:drop=1', /drop takes no value/],
    ['REGION_READ:disconnect=now', /disconnect takes no value/],
    ['REGION_READ:corrupt=0', /corrupt 0 is outside 1\.\./],
    [`REGION_READ:corrupt=${MAX_CORRUPT_BYTES + 1}`, /corrupt \d+ is outside/],
    ['REGION_READ:corrupt=x', /corrupt 'x' is not a whole number/],
    ['REGION_READ:drop:p=1.5', /p '1.5' is not a probability/],
    ['REGION_READ:drop:p=-0.1', /p '-0.1' is not a probability/],
    ['REGION_READ:drop:p=half', /p 'half' is not a probability/],
    ['REGION_READ:drop:after=-1', /after '-1' is not a whole number/],
    ['REGION_READ:drop:count=0', /count 0 is outside 1\.\./],
    ['REGION_READ:drop:count=1.5', /count '1.5' is not a whole number/],
    ['REGION_READ:drop:on=both', /on 'both' is not request or reply/],
    ['REGION_READ:drop:state=FROZEN', /state 'FROZEN' is not a migration state/],
    ['REGION_READ:drop:when=now', /unknown option 'when=now'/],
    ['REGION_READ:drop:p', /p needs a value/],
    ['REGION_READ:drop:p=0.5:p=0.6', /p given twice/],
  ];
  for (const [spec, mentions] of rows) {
    it(`'${spec}' → ${mentions.source}`, () => {
      assert.throws(
        () => parseFaultSpec(spec),
        (e: unknown) => e instanceof InvalidArgumentError && e.errno === EINVAL && mentions.test(e.message) && (spec.trim() === '' || e.message.includes(`'${spec}'`)),
      );
    });
  }
});
