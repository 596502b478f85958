"""Honar Switch: the network edge, dialects and authorization flows.

Glossary (payment acronyms are nouns across the code base, nothing else is abbreviated):

=========  ================================================================
pan        primary account number (card number)
stan       system trace audit number (field 11), unique per terminal per day
rrn        retrieval reference number (field 37)
mti        message type indicator (``0200``)
mcc        merchant category code (field 18)
tid        terminal id (field 41)
tmk        terminal master key (loaded at installation)
tpk        terminal PIN key (working key, PIN blocks)
tak        terminal authentication key (working key, MACs)
pvk / pvv  PIN verification key / value (Visa PVV)
kcv        key check value
ksn        key serial number (DUKPT)
bdk        base derivation key (DUKPT)
lmk        local master key of the HSM; keys at rest are encrypted under it
=========  ================================================================
"""

__version__ = "0.1.0"
