import { spawn } from 'node:child_process';
import type { Command } from 'commander';
import { adminStream } from './admin-client.js';
import { requireOnline, targetOptions, type TargetOptions } from './target.js';

/** The event as environment variables for --exec: NBD_MIRROR_EVENT=leg-faulty, NBD_MIRROR_SLOT=1, ..., and the whole line. */
export function eventEnvironment(event: Record<string, unknown>): Record<string, string> {
  const environment: Record<string, string> = { NBD_MIRROR_EVENT_JSON: JSON.stringify(event) };
  for (const [key, value] of Object.entries(event)) {
    if (value === undefined || value === null) continue;
    const name = `NBD_MIRROR_${key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()}`;
    environment[name] = typeof value === 'object' ? JSON.stringify(value) : String(value);
  }
  return environment;
}

/**
 * Runs the hook once per event, one at a time in arrival order (as mdadm
 * --monitor --program does), so a slow hook delays later ones rather than
 * running them out of order. Its output goes to ours.
 */
class HookRunner {
  private chain: Promise<void> = Promise.resolve();

  constructor(private readonly program: string) {}

  run(event: Record<string, unknown>): void {
    this.chain = this.chain.then(() => new Promise<void>((resolve) => {
      const child = spawn(this.program, [String(event.event)], { stdio: ['ignore', 'inherit', 'inherit'],
        env: { ...process.env, ...eventEnvironment(event) } });
      child.on('error', (error) => {
        console.error(`nbd-mirror events: cannot run ${this.program}: ${error.message}`);
        resolve();
      });
      child.on('exit', () => resolve());
    }));
  }

  idle(): Promise<void> {
    return this.chain;
  }
}

export function registerEvents(program: Command): void {
  targetOptions(program.command('events').description('stream one JSON line per state change from the running server (like drbdsetup events2)'))
    .option('--now', 'print the current state first ("exists" lines, ending with object "-")')
    .option('--exec <program>', 'run PROGRAM once per event, with the event in its environment (NBD_MIRROR_EVENT, ..., NBD_MIRROR_EVENT_JSON)')
    .option('--count <n>', 'exit after this many events (the --now lines not counted)', (value) => Number(value))
    .action(async (options: TargetOptions & { now?: boolean; exec?: string; count?: number }) => {
      const socket = await requireOnline(options, 'events');
      const hook = options.exec ? new HookRunner(options.exec) : undefined;
      let seen = 0;
      let done: (() => void) | undefined;
      const enough = new Promise<void>((resolve) => { done = resolve; });
      const stream = adminStream(socket, { command: 'events', now: options.now }, (event) => {
        console.log(JSON.stringify(event));
        // The --now snapshot describes the state; the hook runs for changes only.
        if (event.event === 'exists') return;
        hook?.run(event);
        seen += 1;
        if (options.count !== undefined && seen >= options.count) done?.();
      });
      await Promise.race([stream, enough]);
      await hook?.idle();
      // The stream ends when the server stops; with --count, when enough were seen.
      process.exit(0);
    });
}
