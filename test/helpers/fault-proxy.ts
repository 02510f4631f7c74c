import type { ExecutionContext } from 'ava';
import { type FaultProxy, startFaultProxy as start } from '../../tools/crash-test/fault-proxy.js';

export type { FaultProxy } from '../../tools/crash-test/fault-proxy.js';

/** The crash toolkit's link-fault proxy, closed when the test ends. */
export async function startFaultProxy(t: ExecutionContext, target: { host: string; port: number }): Promise<FaultProxy> {
  const proxy = await start(target);
  t.teardown(() => proxy.close());
  return proxy;
}
