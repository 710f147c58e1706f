"""The gate: turning detector scores into base / adapter / refusal (``decision``), the versioned
policy store, calibration reports, the adapter scale grid."""
