import type { EventSink, MirrorEvent } from '../blockdev/events.js';

/** An event as it is delivered: numbered in order and stamped with the time it happened. */
export type StampedEvent = MirrorEvent & { seq: number; time: string };

type Listener = (event: StampedEvent) => void;

/**
 * Fans the events of every layer out to whoever watches (admin-socket
 * subscribers, the --exec runner, the metrics' counters). A listener that
 * throws is dropped rather than allowed to break the layer that emitted.
 */
export class EventBus {
  private readonly listeners = new Set<Listener>();
  private seq = 0;

  readonly sink: EventSink = (event) => this.emit(event);

  emit(event: MirrorEvent): void {
    this.seq += 1;
    const stamped = { seq: this.seq, time: new Date().toISOString(), ...event } as StampedEvent;
    for (const listener of [...this.listeners]) {
      try {
        listener(stamped);
      } catch {
        this.listeners.delete(listener);
      }
    }
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
