#include "CZlibShims.h"
#include <string.h>
#include <zlib.h>

// An 8 KiB window (a dictionary and an object of a few KB fit) and a small hash table: a
// stream's state stays near 100 KB, under glibc's threshold for a mapping of its own, so an
// init costs a malloc rather than an mmap.
enum { WINDOW_BITS = 13, MEMORY_LEVEL = 7 };

size_t capstan_deflate_bound(size_t length) {
    // Incompressible input costs 5 bytes per stored block of up to 16 KB, and a little more.
    return length + (length >> 10) + 64;
}

size_t capstan_deflate(const uint8_t *dictionary, size_t dictionary_length, const uint8_t *input, size_t length,
                       uint8_t *output, size_t capacity) {
    z_stream stream;
    memset(&stream, 0, sizeof stream);
    if (deflateInit2(&stream, Z_BEST_SPEED, Z_DEFLATED, -WINDOW_BITS, MEMORY_LEVEL, Z_DEFAULT_STRATEGY) != Z_OK) return 0;
    size_t written = 0;
    if (dictionary_length == 0 || deflateSetDictionary(&stream, dictionary, (uInt)dictionary_length) == Z_OK) {
        stream.next_in = (Bytef *)input;
        stream.avail_in = (uInt)length;
        stream.next_out = output;
        stream.avail_out = (uInt)capacity;
        if (deflate(&stream, Z_FINISH) == Z_STREAM_END) written = stream.total_out;
    }
    deflateEnd(&stream);
    return written;
}

int capstan_inflate(const uint8_t *dictionary, size_t dictionary_length, const uint8_t *input, size_t input_length,
                    uint8_t *output, size_t length) {
    z_stream stream;
    memset(&stream, 0, sizeof stream);
    if (inflateInit2(&stream, -WINDOW_BITS) != Z_OK) return 0;
    int whole = 0;
    // A raw stream takes its dictionary before the first byte.
    if (dictionary_length == 0 || inflateSetDictionary(&stream, dictionary, (uInt)dictionary_length) == Z_OK) {
        stream.next_in = (Bytef *)input;
        stream.avail_in = (uInt)input_length;
        stream.next_out = output;
        stream.avail_out = (uInt)length;
        whole = inflate(&stream, Z_FINISH) == Z_STREAM_END && stream.total_out == length;
    }
    inflateEnd(&stream);
    return whole;
}
