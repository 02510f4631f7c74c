import type { LegSpec } from '../backends/leg-spec.js';
import { remoteSpecFor } from '../backends/nbd-client/remote-spec.js';
import { MirrorSetupError } from './create.js';

/** A leg that could not be opened because it is not there now (a missing file, a remote that does not answer). */
export class LegUnreachableError extends MirrorSetupError {
  constructor(message: string) {
    super(message);
    this.name = 'LegUnreachableError';
  }
}

/** A remote leg for `uri` in a slot, keeping the slot's failfast settings when it was remote already. */
export function remoteLegSpec(uri: string, slotSpec: LegSpec): LegSpec {
  try {
    return { ...slotSpec, path: uri, thin: undefined,
      remote: remoteSpecFor(uri, { failfastMs: slotSpec.remote?.failfastMs, connectTimeoutMs: slotSpec.remote?.connectTimeoutMs }) };
  } catch (error) {
    throw new MirrorSetupError((error as Error).message);
  }
}
