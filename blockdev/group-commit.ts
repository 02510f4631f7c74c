/**
 * Runs an expensive barrier (fdatasync, a log write) once for many callers.
 *
 * A caller must be covered by a barrier that *started after* it called, or a
 * write it completed just before calling could be missed by a sync already in
 * progress. So callers that arrive while a round runs wait for the next round,
 * which starts as soon as the current one ends and covers all of them.
 */
export class GroupCommit {
  private inFlight = false;
  private waiters: Array<{ resolve: () => void; reject: (error: unknown) => void }> = [];
  private rounds = 0;

  constructor(private readonly barrier: () => Promise<void>) {}

  get roundsRun(): number {
    return this.rounds;
  }

  run(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      if (!this.inFlight) this.startRound();
    });
  }

  private startRound(): void {
    const batch = this.waiters;
    this.waiters = [];
    this.inFlight = true;
    this.rounds += 1;
    Promise.resolve()
      .then(() => this.barrier())
      .then(
        () => { for (const waiter of batch) waiter.resolve(); },
        (error: unknown) => { for (const waiter of batch) waiter.reject(error); },
      )
      .finally(() => {
        this.inFlight = false;
        if (this.waiters.length > 0) this.startRound();
      });
  }
}
