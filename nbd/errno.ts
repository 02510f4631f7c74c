import type { BlockErrorCode } from '../blockdev/errors.js';
import { NbdErrno } from './constants.js';

/** Spec: EDQUOT and EFBIG map to ENOSPC (done in toBlockError); EROFS to EPERM. */
export function nbdErrorFor(code: BlockErrorCode): number {
  switch (code) {
    case 'EPERM': case 'EROFS': return NbdErrno.EPERM;
    case 'ENOMEM': return NbdErrno.ENOMEM;
    case 'EINVAL': return NbdErrno.EINVAL;
    case 'ENOSPC': return NbdErrno.ENOSPC;
    case 'EOVERFLOW': return NbdErrno.EOVERFLOW;
    case 'ENOTSUP': return NbdErrno.ENOTSUP;
    case 'ESHUTDOWN': return NbdErrno.ESHUTDOWN;
    case 'EIO': case 'EAGAIN': case 'EBUSY': return NbdErrno.EIO;
  }
}
