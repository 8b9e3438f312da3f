"""Generated from proto/filesystem by scripts/gen_proto.sh; do not edit."""
