/** Wire constants from NetworkBlockDevice/nbd doc/proto.md. */
export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const HandshakeFlag = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;
export const ClientFlag = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;

export const Option = {
  EXPORT_NAME: 1, ABORT: 2, LIST: 3, PEEK_EXPORT: 4, STARTTLS: 5, INFO: 6, GO: 7,
  STRUCTURED_REPLY: 8, LIST_META_CONTEXT: 9, SET_META_CONTEXT: 10, EXTENDED_HEADERS: 11,
} as const;

const ERR = 0x80000000;
export const OptionReply = {
  ACK: 1, SERVER: 2, INFO: 3, META_CONTEXT: 4,
  ERR_UNSUP: ERR + 1, ERR_POLICY: ERR + 2, ERR_INVALID: ERR + 3, ERR_PLATFORM: ERR + 4,
  ERR_TLS_REQD: ERR + 5, ERR_UNKNOWN: ERR + 6, ERR_SHUTDOWN: ERR + 7,
  ERR_BLOCK_SIZE_REQD: ERR + 8, ERR_TOO_BIG: ERR + 9,
} as const;

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0, READ_ONLY: 1 << 1, SEND_FLUSH: 1 << 2, SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4, SEND_TRIM: 1 << 5, SEND_WRITE_ZEROES: 1 << 6, SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8, SEND_RESIZE: 1 << 9, SEND_CACHE: 1 << 10, SEND_FAST_ZERO: 1 << 11,
} as const;

export const Command = {
  READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7,
} as const;

export const commandNames: Record<number, string> = {
  0: 'READ', 1: 'WRITE', 2: 'DISC', 3: 'FLUSH', 4: 'TRIM', 5: 'CACHE', 6: 'WRITE_ZEROES', 7: 'BLOCK_STATUS',
};

export const CommandFlag = {
  FUA: 1 << 0, NO_HOLE: 1 << 1, DF: 1 << 2, REQ_ONE: 1 << 3, FAST_ZERO: 1 << 4,
} as const;

export const ReplyFlag = { DONE: 1 << 0 } as const;
export const ReplyType = {
  NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5,
  ERROR: (1 << 15) + 1, ERROR_OFFSET: (1 << 15) + 2,
} as const;

export const NbdErrno = {
  EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108,
} as const;

export const StateFlag = { HOLE: 1 << 0, ZERO: 1 << 1 } as const;

export const BASE_ALLOCATION = 'base:allocation';
/** QEMU's changed-block contexts, one per checkpoint: qemu:dirty-bitmap:NAME (qemu docs/interop/nbd.rst). */
export const DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';
/** In a qemu:dirty-bitmap context, bit 0 of a descriptor's flags: the extent changed since the checkpoint. */
export const DIRTY_STATE = 1;
/** base:allocation's id on every connection; dirty-bitmap contexts are numbered after it. */
export const BASE_ALLOCATION_ID = 1;

export const Limits = {
  /** Strings (names, messages) MUST be at most 4096 bytes. */
  stringBytesMax: 4096,
  /** Option payloads beyond this are a DoS and are not read into memory. */
  optionBytesMax: 65536,
  /** Longer options are skipped unread up to this; beyond it no option is plausible and the client is dropped. */
  optionSkipBytesMax: 16 * 1024 * 1024,
  /** Largest READ/WRITE payload we accept and advertise (qemu and the kernel use 32 MiB). */
  payloadBytesMax: 32 * 1024 * 1024,
  optionsPerConnectionMax: 1024,
  metaQueriesMax: 128,
} as const;

export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_HEADER_BYTES = 16;
export const STRUCTURED_REPLY_HEADER_BYTES = 20;
