// Real parts for end-to-end tests and benchmarks: the `threads` binary serving on loopback, its
// command line as a writer, and Debian's Chromium driven by playwright-core.

import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, existsSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const root = resolve(new URL('../..', import.meta.url).pathname);

/** The binary under test: `THREADS_BIN`, else the release build, else the debug build. */
export const bin = process.env.THREADS_BIN
  ?? [join(root, 'target/release/threads'), join(root, 'target/debug/threads')].find(existsSync);

/** Directories made by `tempDir`, removed when the test process exits. */
const made = new Set();
process.on('exit', () => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

export function tempDir(name) {
  const dir = mkdtempSync(join(tmpdir(), `threads-web-${name}-`));
  made.add(dir);
  return dir;
}

async function freePort() {
  const server = createServer();
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address();
  await new Promise((ok) => server.close(ok));
  return port;
}

/**
 * Starts `threads serve` on a loopback port (a free one unless given) with its own data
 * directory; resolves once it is ready. `server.output()` is everything it printed.
 */
export async function startServer({ dataDir = tempDir('data'), env = {}, port = null } = {}) {
  port ??= await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child = spawn(bin, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--p2p-listen', 'none'], {
    env: { ...process.env, RUST_LOG: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d) => { output += d; });
  child.stderr.on('data', (d) => { output += d; });
  const exited = new Promise((ok) => child.on('exit', ok));
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${url}/readyz`)).ok) break;
    } catch {
      // Not listening yet.
    }
    if (child.exitCode !== null || i > 300) throw new Error(`the server did not start:\n${output}`);
    await new Promise((ok) => setTimeout(ok, 50));
  }
  return {
    url,
    dataDir,
    output: () => output,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** A command-line peer with its own home: `peer.run('write', thread, '{"a":1}')` → parsed JSON. */
export function cliPeer(home = tempDir('peer')) {
  return {
    home,
    async run(...args) {
      const { stdout } = await promisify(execFile)(bin, ['--json', ...args], {
        env: { ...process.env, THREADS_HOME: home },
      });
      return JSON.parse(stdout);
    },
  };
}

export const chromiumFlags = [
  '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic',
];

/** Debian's Chromium with a fresh profile: `{ browser, context }` (close the context). */
export async function launchChromium() {
  const { chromium } = await import('playwright-core');
  const context = await chromium.launchPersistentContext(tempDir('profile'), {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: chromiumFlags,
  });
  return context;
}
