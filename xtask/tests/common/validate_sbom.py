"""Validates the published SBOM with the reference validators: spdx-tools for SPDX 2.3 JSON,
cyclonedx-python-lib's strict JSON schema validator for CycloneDX 1.5.

usage: validate_sbom.py <stem>.spdx.json <stem>.cdx.json
Prints one line per document; exits 1 when either is invalid.
"""
import sys

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document


def main(spdx_path: str, cdx_path: str) -> int:
    failed = False
    document = parse_file(spdx_path)
    messages = validate_full_spdx_document(document, "SPDX-2.3")
    if messages:
        failed = True
        print(f"INVALID {spdx_path}: {len(messages)} problem(s)")
        for message in messages[:20]:
            print(f"  {message.validation_message}")
    else:
        print(f"valid SPDX 2.3: {spdx_path} ({len(document.packages)} packages)")
    with open(cdx_path, encoding="utf-8") as f:
        error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(f.read())
    if error is not None:
        failed = True
        print(f"INVALID {cdx_path}: {error}")
    else:
        print(f"valid CycloneDX 1.5: {cdx_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
