import http from 'node:http';
import client from 'prom-client';
import { commandNames } from '../nbd/constants.js';
import { latencyBucketsSeconds, type RequestStats } from '../nbd/request-stats.js';
import { type AdminTarget, serverStatus } from './status-view.js';
import type { EventBus } from './event-bus.js';

/** What the exporter reads at scrape time; nothing is computed between scrapes. */
export interface MetricsSources {
  target: AdminTarget;
  requests: RequestStats;
  connections: () => number;
  requestsInFlight: () => number;
  events: EventBus;
}

const healthStates = ['optimal', 'degraded', 'resyncing', 'failed'] as const;
const legStates = ['in_sync', 'rebuilding', 'faulty', 'empty'] as const;

/**
 * The Prometheus exposition (listen.metrics). Names follow node_exporter's md
 * collector (state one-hot, disks by state, blocks synced) and drbd-reactor
 * (per-device bytes, out-of-sync bytes); every series is computed from the
 * server's own counters when scraped, so the request path only adds numbers.
 */
export function buildRegistry(sources: MetricsSources): client.Registry {
  const registry = new client.Registry();
  const status = (): ReturnType<typeof serverStatus> => serverStatus(sources.target);
  const gauge = (name: string, help: string, labelNames: string[], collect: (metric: client.Gauge) => void): void => {
    registry.registerMetric(new client.Gauge({ name, help, labelNames, registers: [], collect() { this.reset(); collect(this); } }));
  };
  const counterFromEvents = (name: string, help: string, labelNames: string[], pick: (event: Record<string, unknown>) => Record<string, string> | undefined): void => {
    const counter = new client.Counter({ name, help, labelNames, registers: [] });
    sources.events.subscribe((event) => {
      const labels = pick(event as unknown as Record<string, unknown>);
      if (labels) counter.inc(labels);
    });
    registry.registerMetric(counter);
  };

  gauge('nbd_mirror_state', 'Array state, one-hot (like node_md_state)', ['state'], (metric) => {
    const { health } = status();
    for (const state of healthStates) metric.set({ state }, state === health ? 1 : 0);
  });
  gauge('nbd_mirror_legs', 'Legs by state (like node_md_disks)', ['state'], (metric) => {
    const { legs } = status();
    for (const state of legStates) metric.set({ state }, legs.filter((leg) => leg.state === state).length);
  });
  gauge('nbd_mirror_leg_state', 'Each leg\'s state, one-hot', ['slot', 'path', 'state'], (metric) => {
    for (const leg of status().legs) {
      for (const state of legStates) metric.set({ slot: String(leg.slot), path: leg.path ?? '', state }, leg.state === state ? 1 : 0);
    }
  });
  const mirror = (): NonNullable<AdminTarget['mirror']> | undefined => sources.target.mirror;
  registry.registerMetric(new client.Counter({ name: 'nbd_mirror_leg_read_bytes_total', help: 'Bytes read from each leg', labelNames: ['slot'],
    registers: [], collect() {
      this.reset();
      mirror()?.device.legIo.readBytes.forEach((bytes, slot) => this.inc({ slot: String(slot) }, bytes));
    } }));
  registry.registerMetric(new client.Counter({ name: 'nbd_mirror_leg_written_bytes_total', help: 'Bytes written to each leg', labelNames: ['slot'],
    registers: [], collect() {
      this.reset();
      mirror()?.device.legIo.writtenBytes.forEach((bytes, slot) => this.inc({ slot: String(slot) }, bytes));
    } }));
  registry.registerMetric(new client.Counter({ name: 'nbd_mirror_leg_errors_total', help: 'Errors each leg returned, by operation',
    labelNames: ['slot', 'op'], registers: [], collect() {
      this.reset();
      for (const [key, count] of mirror()?.device.legIo.errors ?? []) {
        const [slot, op] = key.split(' ');
        this.inc({ slot, op }, count);
      }
    } }));
  gauge('nbd_mirror_out_of_sync_bytes', 'Bytes in regions that may differ between legs until resynced', [], (metric) => {
    const report = status();
    metric.set((report.regions?.outOfSync ?? 0) * (report.regionSizeBytes ?? 0));
  });
  gauge('nbd_mirror_dirty_regions', 'Regions whose bit is set in the region log', [], (metric) => metric.set(status().bitsSet ?? 0));
  registry.registerMetric(new client.Counter({ name: 'nbd_mirror_log_commits_total', help: 'Region log commits', registers: [], collect() {
    this.reset();
    this.inc(mirror()?.device.log.commitsRun ?? 0);
  } }));
  gauge('nbd_mirror_resync_running', '1 while a resync, re-add or rebuild pass runs', ['kind'], (metric) => {
    const resync = status().resync;
    if (resync && resync.kind !== 'none') metric.set({ kind: resync.kind }, resync.running ? 1 : 0);
  });
  gauge('nbd_mirror_resync_done_bytes', 'Bytes of the current (or last) resync pass done (like node_md_blocks_synced)', [], (metric) => {
    const report = status();
    metric.set((report.resync?.regionsDone ?? 0) * (report.regionSizeBytes ?? 0));
  });
  gauge('nbd_mirror_resync_total_bytes', 'Bytes the current (or last) resync pass covers', [], (metric) => {
    const report = status();
    metric.set((report.resync?.regionsTotal ?? 0) * (report.regionSizeBytes ?? 0));
  });
  gauge('nbd_mirror_check_mismatch_regions', 'Regions the last check found different (md mismatch_cnt; 0 before any check)', [], (metric) => {
    const check = status().lastCheck;
    if (check?.compared) metric.set(check.mismatches);
  });
  gauge('nbd_mirror_connections', 'Connected NBD clients', [], (metric) => metric.set(sources.connections()));
  gauge('nbd_mirror_requests_in_flight', 'NBD requests being served', [], (metric) => metric.set(sources.requestsInFlight()));
  gauge('nbd_mirror_cache_dirty_bytes', 'Bytes in the write-back cache not yet on the legs', [], (metric) => {
    metric.set(status().cache?.dirtyBytes ?? 0);
  });
  gauge('nbd_mirror_cache_cached_bytes', 'Bytes held by the write-back cache, clean and dirty', [], (metric) => {
    metric.set(status().cache?.cachedBytes ?? 0);
  });
  gauge('nbd_mirror_cache_failed', '1 once the cache failed fatally (answers EIO until restarted)', [], (metric) => {
    metric.set(status().cache?.failed ? 1 : 0);
  });
  gauge('nbd_mirror_thin_pool_used_bytes', 'Bytes allocated in each thin leg\'s pool', ['slot'], (metric) => {
    for (const leg of status().legs) if (leg.pool) metric.set({ slot: String(leg.slot) }, leg.pool.usedBytes);
  });
  gauge('nbd_mirror_thin_pool_capacity_bytes', 'Capacity of each thin leg\'s pool', ['slot'], (metric) => {
    for (const leg of status().legs) if (leg.pool) metric.set({ slot: String(leg.slot) }, leg.pool.capacityBytes);
  });
  gauge('nbd_mirror_checkpoint_changed_bytes', 'Each checkpoint: bytes changed since it was created (whole 64 KiB granules)', ['name'],
    (metric) => {
      for (const checkpoint of status().checkpoints ?? []) metric.set({ name: checkpoint.name }, checkpoint.dirtyBytes);
    });
  gauge('nbd_mirror_backup_scratch_used_bytes', 'Each running backup view: scratch bytes holding the old contents of blocks written since it started',
    ['name'], (metric) => {
      for (const view of status().backups ?? []) metric.set({ name: view.name }, view.scratchUsedBytes);
    });
  gauge('nbd_mirror_backup_failed', 'Each running backup view: 1 once it failed (scratch full), until stopped', ['name'], (metric) => {
    for (const view of status().backups ?? []) metric.set({ name: view.name }, view.failed ? 1 : 0);
  });
  counterFromEvents('nbd_mirror_enospc_total', 'Times writeback ran out of space (a thin pool full)', [],
    (event) => (event.event === 'enospc' ? {} : undefined));
  counterFromEvents('nbd_mirror_connections_refused_total', 'Clients refused at accept or dropped while negotiating, by reason', ['reason'],
    (event) => (event.event === 'client-refused' ? { reason: String(event.reason) } : undefined));
  counterFromEvents('nbd_mirror_leg_failures_total', 'Times a leg was marked faulty', [],
    (event) => (event.event === 'leg-faulty' ? {} : undefined));
  gauge('nbd_mirror_remote_leg_connected', 'Each remote leg: 1 while its link is up and in use, 0 while away, refused or held', ['slot'], (metric) => {
    for (const leg of status().legs) if (leg.remote) metric.set({ slot: String(leg.slot) }, leg.remote.link === 'connected' ? 1 : 0);
  });
  counterFromEvents('nbd_mirror_remote_leg_reconnects_total', 'Times a remote leg came back by itself (re-added after its link returned)', ['slot'],
    (event) => (event.event === 'leg-reconnected' ? { slot: String(event.slot) } : undefined));
  counterFromEvents('nbd_mirror_remote_leg_refusals_total', 'Times a returning remote leg was refused (not the leg that left)', ['slot'],
    (event) => (event.event === 'leg-refused' ? { slot: String(event.slot) } : undefined));

  const { requests } = sources;
  const ops = Object.entries(commandNames).filter(([command]) => Number(command) < requests.count.length);
  registry.registerMetric(new client.Counter({ name: 'nbd_mirror_requests_total', help: 'NBD requests served, by command', labelNames: ['op'],
    registers: [], collect() {
      this.reset();
      for (const [command, op] of ops) this.inc({ op: op.toLowerCase() }, requests.count[Number(command)]);
    } }));
  registry.registerMetric(new client.Counter({ name: 'nbd_mirror_request_bytes_total', help: 'Payload bytes of reads and writes', labelNames: ['op'],
    registers: [], collect() {
      this.reset();
      for (const [command, op] of ops) this.inc({ op: op.toLowerCase() }, requests.bytes[Number(command)]);
    } }));
  registry.registerMetric(new client.Counter({ name: 'nbd_mirror_request_errors_total', help: 'NBD requests answered with an error, by command and errno',
    labelNames: ['op', 'error'], registers: [], collect() {
      this.reset();
      for (const [command, byCode] of requests.errors) {
        for (const [error, count] of byCode) this.inc({ op: commandNames[command].toLowerCase(), error }, count);
      }
    } }));
  registry.registerMetric(new client.Counter({ name: 'nbd_mirror_flush_failures_total', help: 'Flushes answered with an error', registers: [],
    collect() {
      this.reset();
      let failed = 0;
      for (const count of requests.errors.get(3)?.values() ?? []) failed += count;
      this.inc(failed);
    } }));
  // Registered as prom-client registers its own: the registry only calls get() and the no-ops below.
  registry.registerMetric(new RequestLatencyHistogram(requests, ops) as unknown as client.Metric);
  return registry;
}

/**
 * The latency histogram, built from RequestStats' per-bucket counts at scrape
 * time (prom-client's own Histogram would do a label lookup per request).
 */
class RequestLatencyHistogram {
  readonly name = 'nbd_mirror_request_duration_seconds';
  readonly help = 'Time from a request\'s arrival to its reply, by command';
  readonly type = 'histogram';
  readonly aggregator = 'sum';

  constructor(private readonly requests: RequestStats, private readonly ops: Array<[string, string]>) {}

  get(): Promise<client.MetricObjectWithValues<client.MetricValueWithName<string>>> {
    const values: Array<client.MetricValueWithName<string>> = [];
    const width = latencyBucketsSeconds.length + 1;
    for (const [command, name] of this.ops) {
      const index = Number(command);
      const op = name.toLowerCase();
      let cumulative = 0;
      for (let bucket = 0; bucket < width; bucket += 1) {
        cumulative += this.requests.buckets[index * width + bucket];
        const le = bucket < latencyBucketsSeconds.length ? String(latencyBucketsSeconds[bucket]) : '+Inf';
        values.push({ metricName: `${this.name}_bucket`, labels: { op, le }, value: cumulative });
      }
      values.push({ metricName: `${this.name}_sum`, labels: { op }, value: this.requests.secondsSum[index] });
      values.push({ metricName: `${this.name}_count`, labels: { op }, value: this.requests.count[index] });
    }
    return Promise.resolve({ name: this.name, help: this.help, type: 'histogram', values, aggregator: 'sum' } as
      unknown as client.MetricObjectWithValues<client.MetricValueWithName<string>>);
  }

  reset(): void {}
  // prom-client's registry calls these on every metric it holds.
  labels(): this { return this; }
  remove(): void {}
}

/** Serves GET /metrics on the configured address; anything else is 404. */
export class MetricsServer {
  private readonly server: http.Server;

  constructor(private readonly registry: () => client.Registry | undefined) {
    this.server = http.createServer((request, response) => void this.answer(request, response));
  }

  listen(address: { host: string; port: number }): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(address.port, address.host, () => {
        this.server.off('error', reject);
        const bound = this.server.address() as { address: string; port: number };
        resolve({ host: bound.address, port: bound.port });
      });
    });
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private async answer(request: http.IncomingMessage, response: http.ServerResponse): Promise<void> {
    const registry = this.registry();
    if (request.method !== 'GET' || (request.url !== '/metrics' && request.url !== '/')) {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('not found: the metrics are at /metrics\n');
      return;
    }
    if (!registry) {
      response.writeHead(503, { 'content-type': 'text/plain' }).end('the server is still starting\n');
      return;
    }
    try {
      const text = await registry.metrics();
      response.writeHead(200, { 'content-type': registry.contentType }).end(text);
    } catch (error) {
      response.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${(error as Error).message}\n`);
    }
  }
}
