"""Generated from proto/process by scripts/gen_proto.sh; do not edit."""
