import net from 'node:net';

export interface AdmissionOptions {
  /** Connections at once, negotiating or attached. */
  maxConnections: number;
  /** Connections still negotiating (options or the TLS handshake) at once. */
  negotiatingMax: number;
  /** TCP connections from one address at once (unix-socket clients are governed by the socket's permissions). */
  perAddressMax: number;
  /** TCP clients must come from one of these addresses or networks; undefined: any. */
  allow: AllowList | undefined;
}

/** limits.negotiatingMax and limits.perAddressMax: enforced here. */
export const negotiatingMaxBounds = { min: 1, max: 65536, default: 32 };
export const perAddressMaxBounds = { min: 1, max: 65536, default: 32 };

/** The limit a dropped negotiating connection made room under. */
export type DropReason = 'per-address' | 'negotiating' | 'total';

export type RefusalReason = 'not-allowed' | 'per-address-limit' | 'too-many-connections' | 'negotiating-dropped';

/** A connection the policy can see: where it came from, and whether it is past negotiation. */
export interface Admitted {
  readonly address: string | undefined;
  readonly negotiating: boolean;
}

export type Verdict<T extends Admitted> =
  /** `dropReason`: which limit the dropped connection made room under. */
  | { admit: true; drop: undefined }
  | { admit: true; drop: T; dropReason: DropReason }
  | { admit: false; reason: RefusalReason; detail: string };

/**
 * Who gets in. A connection cap alone lets a client that opens connections
 * and sends nothing lock everyone out until the handshake deadline; here
 * connections still negotiating have a budget of their own, and when it is
 * full (or the whole house is) the oldest of them is dropped to admit the
 * newcomer. A real client negotiates in milliseconds, so to be dropped it
 * must be outlasted by a budget's worth of newer connections; an idle one
 * is dropped as soon as that many arrive, so idle sockets can never hold the
 * door. Attached clients are never dropped for a newcomer. The per-address
 * cap keeps one host from filling the budget by itself; at it, that address's
 * oldest negotiating connection is dropped the same way, and only an address
 * whose connections are all attached is refused. The allow list refuses
 * strangers before they cost anything.
 */
export class AdmissionPolicy<T extends Admitted> {
  constructor(private readonly options: AdmissionOptions) {}

  /** `current` in accept order, oldest first. */
  decide(address: string | undefined, current: Iterable<T>): Verdict<T> {
    if (address !== undefined && this.options.allow !== undefined && !this.options.allow.allows(address)) {
      return { admit: false, reason: 'not-allowed', detail: `${address} is not in listen.allow` };
    }
    let total = 0;
    let fromAddress = 0;
    let negotiating = 0;
    let oldestNegotiating: T | undefined;
    let oldestNegotiatingFromAddress: T | undefined;
    for (const connection of current) {
      total += 1;
      const sameAddress = address !== undefined && connection.address === address;
      if (sameAddress) fromAddress += 1;
      if (connection.negotiating) {
        negotiating += 1;
        oldestNegotiating ??= connection;
        if (sameAddress) oldestNegotiatingFromAddress ??= connection;
      }
    }
    if (address !== undefined && fromAddress >= this.options.perAddressMax) {
      // Localhost, NAT and proxies put many clients behind one address: idle sockets from it must not lock out
      // a client from it that negotiates promptly, so the cap drops that address's oldest negotiating one.
      if (oldestNegotiatingFromAddress === undefined) {
        return { admit: false, reason: 'per-address-limit',
          detail: `${address} already has ${fromAddress} attached clients (limits.perAddressMax)` };
      }
      return { admit: true, drop: oldestNegotiatingFromAddress, dropReason: 'per-address' };
    }
    const full = negotiating >= this.options.negotiatingMax || total >= this.options.maxConnections;
    if (!full) return { admit: true, drop: undefined };
    if (oldestNegotiating === undefined) {
      return { admit: false, reason: 'too-many-connections', detail: `${total} clients attached (limits.maxConnections)` };
    }
    return { admit: true, drop: oldestNegotiating, dropReason: negotiating >= this.options.negotiatingMax ? 'negotiating' : 'total' };
  }
}

export class AllowListError extends Error {
  constructor(readonly index: number, readonly problem: string) {
    super(`[${index}]: ${problem}`);
    this.name = 'AllowListError';
  }
}

/** Addresses and networks (CIDR) a client may connect from, as nbd-server's authfile and nbdkit's ip filter. */
export class AllowList {
  private readonly list = new net.BlockList();

  /** Throws with the entry's index and what is wrong with it. */
  constructor(entries: readonly string[]) {
    entries.forEach((entry, index) => {
      const [address, prefix, extra] = entry.trim().split('/');
      const family = net.isIP(address);
      if (family === 0 || extra !== undefined) throw new AllowListError(index, `"${entry}" is not an address or network (e.g. 10.0.0.0/8, ::1)`);
      const type = family === 4 ? 'ipv4' : 'ipv6';
      if (prefix === undefined) {
        this.list.addAddress(address, type);
        return;
      }
      const bits = /^\d+$/.test(prefix) ? Number(prefix) : NaN;
      if (!(bits >= 0 && bits <= (family === 4 ? 32 : 128))) throw new AllowListError(index, `"${entry}" has a prefix length outside 0..${family === 4 ? 32 : 128}`);
      this.list.addSubnet(address, bits, type);
    });
  }

  allows(address: string): boolean {
    // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; the list names them as IPv4.
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    if (mapped !== null) return this.list.check(mapped[1], 'ipv4') || this.list.check(address, 'ipv6');
    return this.list.check(address, net.isIP(address) === 6 ? 'ipv6' : 'ipv4');
  }
}
