"""python-bitcointx, loaded once and pointed at coincurve's bundled libsecp256k1.

bitcointx loads libsecp256k1 with ctypes; coincurve already ships one, so no system package is
needed. Import bitcointx only through this module so the path is set before `bitcointx.core.key`.
"""

from __future__ import annotations

import bitcointx
import coincurve._libsecp256k1 as _secp

bitcointx.set_custom_secp256k1_path(_secp.__file__)

from bitcointx.core import (  # noqa: E402
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxInWitness,
    CMutableTxOut,
    COutPoint,
    CTransaction,
    CTxInWitness,
    CTxOut,
    CTxWitness,
    lx,
    x,
)
from bitcointx.core.script import (  # noqa: E402
    SIGVERSION_TAPROOT,
    SIGVERSION_TAPSCRIPT,
    CScript,
    CScriptWitness,
    SIGHASH_Type,
    SignatureHashSchnorr,
)

__all__ = [
    "SIGVERSION_TAPROOT",
    "SIGVERSION_TAPSCRIPT",
    "CMutableTransaction",
    "CMutableTxIn",
    "CMutableTxInWitness",
    "CMutableTxOut",
    "COutPoint",
    "CScript",
    "CScriptWitness",
    "CTransaction",
    "CTxInWitness",
    "CTxOut",
    "CTxWitness",
    "SIGHASH_Type",
    "SignatureHashSchnorr",
    "lx",
    "x",
]
