import type { ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import { run, runOk } from './tools.js';

/**
 * A second host for a test: a network namespace of its own, joined to this
 * one by a veth pair on a private /30, torn down when the test ends. The
 * link can be cut and restored at the kernel level (`ip link set down`:
 * packets vanish, no reset), which is how a real network partition looks.
 */
export interface TestHost {
  name: string;
  /** The namespace's address, and ours on the same link. */
  address: string;
  localAddress: string;
  /** argv that runs a command inside the namespace (`ip netns exec NAME ...`). */
  exec(command: string[]): string[];
  cut(): Promise<void>;
  restore(): Promise<void>;
}

/** Why namespaces cannot be made here, or undefined when they can (root, iproute2, veth). */
export async function netnsUnavailable(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'network namespaces need root';
  const probe = `nbdm-probe-${process.pid}`;
  const added = await run('ip', ['netns', 'add', probe]);
  if (added.code !== 0) return `ip netns add failed: ${added.stderr.trim()}`;
  await run('ip', ['netns', 'del', probe]);
  return undefined;
}

export async function makeTestHost(t: ExecutionContext): Promise<TestHost> {
  const tag = crypto.randomBytes(3).toString('hex');
  const name = `nbdm-${tag}`;
  const hostSide = `nbh${tag}`;
  const nsSide = `nbn${tag}`;
  // A /30 in 10.240.0.0/12 drawn at random, so tests running side by side do not collide.
  const block = crypto.randomInt(0, 1 << 18) * 4;
  const octets = (offset: number): string => {
    const value = (10 << 24) + (240 << 16) + block + offset;
    return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join('.');
  };
  const localAddress = octets(1);
  const address = octets(2);
  t.teardown(async () => {
    await run('ip', ['link', 'del', hostSide]);
    await run('ip', ['netns', 'del', name]);
  });
  await runOk('ip', ['netns', 'add', name]);
  await runOk('ip', ['link', 'add', hostSide, 'type', 'veth', 'peer', 'name', nsSide]);
  await runOk('ip', ['link', 'set', nsSide, 'netns', name]);
  await runOk('ip', ['addr', 'add', `${localAddress}/30`, 'dev', hostSide]);
  await runOk('ip', ['link', 'set', hostSide, 'up']);
  await runOk('ip', ['netns', 'exec', name, 'ip', 'addr', 'add', `${address}/30`, 'dev', nsSide]);
  await runOk('ip', ['netns', 'exec', name, 'ip', 'link', 'set', nsSide, 'up']);
  await runOk('ip', ['netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up']);
  return {
    name, address, localAddress,
    exec: (command) => ['ip', 'netns', 'exec', name, ...command],
    cut: async () => { await runOk('ip', ['link', 'set', hostSide, 'down']); },
    restore: async () => { await runOk('ip', ['link', 'set', hostSide, 'up']); },
  };
}
