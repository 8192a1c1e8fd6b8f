#ifndef CZLIBSHIMS_H
#define CZLIBSHIMS_H

// Raw deflate with a preset dictionary, for small objects that resemble one another (the
// children in the Kubernetes child cache: deflated against a sibling, a 2 KB Deployment keeps
// under 100 bytes). zlib's init calls are macros, which Swift cannot call.
#include <stddef.h>
#include <stdint.h>

/// An upper bound of what `capstan_deflate` writes for `length` bytes.
size_t capstan_deflate_bound(size_t length);
/// Deflates `input` against `dictionary` into `output` (of `capacity` bytes, at least the
/// bound); returns the bytes written, or 0 on failure.
size_t capstan_deflate(const uint8_t *dictionary, size_t dictionary_length, const uint8_t *input, size_t length,
                       uint8_t *output, size_t capacity);
/// Inflates what `capstan_deflate` wrote (with the same dictionary) into `output`, which
/// holds exactly `length` bytes (the original's); returns 1 when all of it came back whole.
int capstan_inflate(const uint8_t *dictionary, size_t dictionary_length, const uint8_t *input, size_t input_length,
                    uint8_t *output, size_t length);

#endif
