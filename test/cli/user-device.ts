/**
 * A user's project for the CLI tests of `vfio-user serve ./dev.js` and
 * `vfio-user migrate --from`: a temporary directory with `node_modules/vfio-user`
 * linked to this checkout (so a module imports 'vfio-user' as a user's does)
 * and device modules written as a user would, plus helpers to run the real
 * binary there and wait for its lines.
 *
 * `dev.js` — the "scratch" card: 16 32-bit registers at BAR0 0x00–0x3f (the
 * factory fills them from `-- --seed N`, and again on reset); a doorbell at
 * 0x100: the device DMA-writes 4 KiB of `value & 0xff` into guest RAM page
 * `value mod pages` and counts it in register 15 (only while it operates:
 * stopped states ignore it). Migratable (state = the 64 register bytes). It
 * prints on its stdout, independently of the CLI, every migration arc
 * (`arc FROM>TO`), every reset, and at the switch-over — entering STOP_COPY on
 * the source, STOP → RUNNING on the destination — its registers and the
 * SHA-256 of the guest RAM it sees through its DMA mapping.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MAIN } from './support.js';

/** The checkout (`package.json` with `exports` → dist/src/index.js). */
const REPO = fileURLToPath(new URL('../../../', import.meta.url));

const SCRATCH = `
import { createHash } from 'node:crypto';
import { createDevice } from 'vfio-user';

const STOP = 1, RUNNING = 2, STOP_COPY = 3, PRE_COPY = 6;

export default function scratch({ args }) {
  const at = args.indexOf('--seed');
  const seed = at >= 0 ? Number(args[at + 1]) : 0;
  if (!Number.isInteger(seed)) throw new Error('--seed ' + args[at + 1] + ' is not an integer');
  const regs = new DataView(new ArrayBuffer(64));
  const fill = () => { for (let i = 0; i < 16; i++) regs.setUint32(i * 4, seed === 0 ? 0 : (Math.imul(seed, 0x9e3779b1) + i) >>> 0, true); };
  fill();
  let ram;
  let operating = true;
  const say = (line) => process.stdout.write(line + '\\n');
  const report = async (what) => {
    const bytes = ram ? await device.dma.read(ram.addr, Number(ram.size)) : new Uint8Array(0);
    say(what + ' regs=' + Buffer.from(regs.buffer).toString('hex') + ' ram=' + createHash('sha256').update(bytes).digest('hex'));
  };
  const device = createDevice({
    name: 'scratch',
    pci: { vendorId: 0x1af4, deviceId: 0x10f7, classCode: 0xff0000 },
    regions: {
      bar0: {
        size: 4096,
        read: (offset, length) => {
          const out = new Uint8Array(length);
          if (offset < 64) out.set(new Uint8Array(regs.buffer, offset, Math.min(length, 64 - offset)));
          return out;
        },
        write: async (offset, data) => {
          if (!operating) return;
          if (offset + data.length <= 60) new Uint8Array(regs.buffer).set(data, offset);
          else if (offset === 0x100 && data.length === 4 && ram) {
            const n = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
            const page = BigInt(n % Number(ram.size / 4096n)) * 4096n;
            await device.dma.write(ram.addr + page, new Uint8Array(4096).fill(n & 0xff));
            regs.setUint32(60, regs.getUint32(60, true) + 1, true);
          }
        },
      },
    },
    dma: { onMap: (region) => { ram = region; }, onUnmap: () => { ram = undefined; } },
    reset: (reason) => { say('reset ' + reason); fill(); },
    migration: {
      deviceType: 'scratch', stateVersion: 1,
      save: () => new Uint8Array(regs.buffer.slice(0)),
      load: (_kind, bytes) => {
        if (bytes.length !== 64) throw new Error('state of ' + bytes.length + ' bytes, expected 64');
        new Uint8Array(regs.buffer).set(bytes);
      },
      transition: async (from, to) => {
        say('arc ' + from + '>' + to);
        operating = to === RUNNING || to === PRE_COPY;
        if (to === STOP_COPY) await report('switchover-source');
        if (from === STOP && to === RUNNING) await report('switchover-destination');
      },
    },
  });
  return device;
}
`;

/** The scratch card without `migration`, as a named export of a definition. */
const NO_MIGRATION = `
export const device = {
  name: 'plain',
  pci: { vendorId: 0x1af4, deviceId: 0x10f7, classCode: 0xff0000 },
  regions: { bar0: { size: 4096, read: (_o, n) => new Uint8Array(n), write: () => undefined } },
};
`;

/** A migratable device of another type (same shape as scratch, so only its identity differs). */
const OTHER_TYPE = SCRATCH.replace("deviceType: 'scratch'", "deviceType: 'other-card'");

/** The modules written into every project. */
export const MODULES = { 'dev.js': SCRATCH, 'nomig.js': NO_MIGRATION, 'other.js': OTHER_TYPE } as const;

/** The registers `dev.js` starts with for `--seed seed` (hex of the 64 bytes), computed here independently. */
export function seededRegs(seed: number): string {
  const regs = Buffer.alloc(64);
  for (let i = 0; i < 16; i++) regs.writeUInt32LE(seed === 0 ? 0 : (Math.imul(seed, 0x9e3779b1) + i) >>> 0, i * 4);
  return regs.toString('hex');
}

/** SHA-256 (hex) of `data` zero-padded to `size`. */
export function paddedSha256(data: Uint8Array, size: number): string {
  const padded = new Uint8Array(size);
  padded.set(data);
  return createHash('sha256').update(padded).digest('hex');
}

/** A temporary user project. */
export interface Project {
  dir: string;
  /** Writes `name` with `text` into the project. */
  write(name: string, text: string | Uint8Array): string;
  remove(): void;
}

/** Creates a project with {@link MODULES} and `node_modules/vfio-user` → this checkout. */
export function createProject(): Project {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-project-'));
  mkdirSync(join(dir, 'node_modules'));
  symlinkSync(REPO, join(dir, 'node_modules', 'vfio-user'));
  const write = (name: string, text: string | Uint8Array): string => {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  };
  for (const [name, text] of Object.entries(MODULES)) write(name, text);
  return { dir, write, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A CLI process run in a project. */
export interface Proc {
  child: ChildProcess;
  out(): string;
  err(): string;
  /** Exit code (null when killed by a signal). */
  exited: Promise<number | null>;
  /** The first match of `re` in stdout (or `stream`), waiting for it; rejects if the process exits first. */
  waitFor(re: RegExp, stream?: 'out' | 'err'): Promise<RegExpExecArray>;
  /** Lines of stdout matching `re`. */
  lines(re: RegExp): string[];
  kill(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Starts `vfio-user ...args` with `cwd` (killed by a 60 s watchdog); `input`, if given, is its whole stdin. */
export function startCli(args: readonly string[], cwd: string, input?: string): Proc {
  const child = spawn(process.execPath, [MAIN, ...args], { cwd, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
  if (input !== undefined) child.stdin?.end(input);
  const text = { out: '', err: '' };
  const waiters: Array<{ re: RegExp; stream: 'out' | 'err'; resolve: (m: RegExpExecArray) => void }> = [];
  const check = (): void => {
    for (const w of [...waiters]) {
      const m = w.re.exec(text[w.stream]);
      if (m) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  };
  child.stdout?.on('data', (d: Buffer) => ((text.out += d.toString()), check()));
  child.stderr?.on('data', (d: Buffer) => ((text.err += d.toString()), check()));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  const watchdog = setTimeout(() => child.kill('SIGKILL'), 60_000);
  void exited.then(() => clearTimeout(watchdog));
  return {
    child, exited,
    out: () => text.out,
    err: () => text.err,
    waitFor: (re, stream = 'out') => new Promise((resolve, reject) => {
      const m = re.exec(text[stream]);
      if (m) return resolve(m);
      waiters.push({ re, stream, resolve });
      void exited.then(() => reject(new Error(`vfio-user ${args.join(' ')} exited before ${re}: ${text.err}`)));
    }),
    lines: (re) => text.out.split('\n').filter((l) => re.test(l)),
    kill: (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** `vfio-user serve MODULE --socket <project>/<name> [-- args]`, once it announced that it listens. */
export async function serveModule(project: Project, module: string, name: string, args: readonly string[] = []): Promise<Proc & { socket: string }> {
  const socket = join(project.dir, name);
  const proc = startCli(['serve', module, '--socket', socket, ...(args.length > 0 ? ['--', ...args] : [])], project.dir);
  await proc.waitFor(/^serving .* on /m);
  return { ...proc, socket };
}

/** `switchover-… regs=HEX ram=SHA` printed by a scratch device. */
export function switchover(proc: Proc, side: 'source' | 'destination'): { regs: string; ram: string } | undefined {
  const line = proc.lines(new RegExp(`^switchover-${side} `)).at(-1);
  const m = line === undefined ? null : / regs=([0-9a-f]+) ram=([0-9a-f]+)/.exec(line);
  return m ? { regs: m[1] as string, ram: m[2] as string } : undefined;
}
