//! The TruthDB OS installer engine (to come): lists disks, plans and writes the appliance to a
//! disk. Not part of the image yet.
