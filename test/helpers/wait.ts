import { adminRequest } from '../../tools/admin-client.js';

/** Polls until the condition holds or the time is up; tells which. */
export async function waitUntil(condition: () => boolean | Promise<boolean>, timeoutMs: number, intervalMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** Polls a server's status over its admin socket until `done` holds or the time is up; returns the last status. */
export async function statusWhen<Status>(adminSocket: string, done: (status: Status) => boolean, timeoutMs: number, intervalMs: number):
  Promise<Status> {
  let status = await adminRequest(adminSocket, { command: 'status' }) as Status;
  await waitUntil(async () => {
    status = await adminRequest(adminSocket, { command: 'status' }) as Status;
    return done(status);
  }, timeoutMs, intervalMs);
  return status;
}
