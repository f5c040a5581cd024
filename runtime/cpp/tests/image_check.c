/*
 * image_check.c - drives the image C ABI (vae_image.h) from plain C for tests/runtime/cpp/test_cpp_images.py.
 *
 *   vae_image_check resize IN.u8 W H C OUT_W OUT_H OUT.u8
 *   vae_image_check prepare IN.u8 W H C IMAGE_SIZE IN_CHANNELS CROP LO HI OUT.f32
 *   vae_image_check to_pixels IN.f32 CHANNELS IMAGE_SIZE LO HI OUT.u8
 *   vae_image_check errors            (misuse battery: prints "ok ..." / "FAIL ..." lines, then the failure count)
 *
 * .u8 files are raw HWC bytes, .f32 raw float32 (CHW). Exit 0 ok, 1 a call failed (status and message on stderr),
 * 2 usage or file errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vae_image.h"

static void* read_all(const char* path, size_t expected) {
    FILE* f = fopen(path, "rb");
    void* buf;
    size_t got;
    if (!f) {
        fprintf(stderr, "%s: cannot be opened\n", path);
        exit(2);
    }
    buf = malloc(expected ? expected : 1);
    got = fread(buf, 1, expected, f);
    fclose(f);
    if (got != expected) {
        fprintf(stderr, "%s: %zu bytes, expected %zu\n", path, got, expected);
        exit(2);
    }
    return buf;
}

static void write_all(const char* path, const void* data, size_t bytes) {
    FILE* f = fopen(path, "wb");
    if (!f || fwrite(data, 1, bytes, f) != bytes) {
        fprintf(stderr, "%s: cannot be written\n", path);
        exit(2);
    }
    fclose(f);
}

static int check_status(vae_status st) {
    if (st == VAE_OK) return 0;
    fprintf(stderr, "%s: %s\n", vae_status_name(st), vae_last_error());
    return 1;
}

static vae_model_info model(int size, int channels, float lo, float hi) {
    vae_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    info.in_channels = channels;
    info.out_channels = channels;
    info.image_size = size;
    info.pixel_min = lo;
    info.pixel_max = hi;
    return info;
}

static int failures = 0;

static void expect(const char* name, vae_status st, vae_status want, const char* needle) {
    const char* msg = vae_last_error();
    if (st == want && (!needle || strstr(msg, needle))) {
        printf("ok %s\n", name);
    } else {
        printf("FAIL %s: %s '%s' (expected %s with '%s')\n", name, vae_status_name(st), msg, vae_status_name(want),
               needle ? needle : "");
        ++failures;
    }
}

static int errors(void) {
    unsigned char px[4 * 5 * 3] = {0};
    unsigned char out[64 * 64 * 3];
    float img[3 * 8 * 8];
    vae_model_info info = model(8, 3, -1.f, 1.f);
    vae_model_info old = info;
    expect("prepare ok", vae_image_prepare(px, 5, 4, 3, sizeof px, &info, 148, img, 3 * 8 * 8), VAE_OK, NULL);
    expect("prepare NULL pixels", vae_image_prepare(NULL, 5, 4, 3, sizeof px, &info, 148, img, 192),
           VAE_ERR_INVALID_ARGUMENT, "vae_image_prepare: pixels is NULL");
    vae_image_prepare(px, 5, 4, 3, sizeof px, &info, 148, img, 192);
    if (vae_last_error()[0] == '\0') {
        printf("ok a success clears the message\n");
    } else {
        printf("FAIL a success left '%s'\n", vae_last_error());
        ++failures;
    }
    expect("prepare wrong count", vae_image_prepare(px, 5, 4, 3, sizeof px - 1, &info, 148, img, 192),
           VAE_ERR_SHAPE, "pixels_count is 59, expected 60 (5 x 4 x 3)");
    expect("prepare 5 channels", vae_image_prepare(px, 5, 4, 5, 100, &info, 148, img, 192),
           VAE_ERR_INVALID_ARGUMENT, "channels 1-4, got 5x4x5");
    expect("prepare small buffer", vae_image_prepare(px, 5, 4, 3, sizeof px, &info, 148, img, 191),
           VAE_ERR_SHAPE, "image holds 191 elements, needs 192");
    expect("prepare crop 0", vae_image_prepare(px, 5, 4, 3, sizeof px, &info, 0, img, 192),
           VAE_ERR_INVALID_ARGUMENT, "crop: expected a size >= 1");
    expect("prepare NULL info", vae_image_prepare(px, 5, 4, 3, sizeof px, NULL, 148, img, 192),
           VAE_ERR_INVALID_ARGUMENT, "info is NULL");
    old.struct_size = 8;
    expect("prepare old info", vae_image_prepare(px, 5, 4, 3, sizeof px, &old, 148, img, 192),
           VAE_ERR_INVALID_ARGUMENT, "info->struct_size is 8, expected at least");
    info.in_channels = 2;
    expect("prepare model channels", vae_image_prepare(px, 5, 4, 3, sizeof px, &info, 148, img, 192),
           VAE_ERR_INVALID_ARGUMENT, "the model's channels must be 1 (grey) or 3 (RGB), got 2");
    info = model(8, 3, 1.f, 1.f);
    expect("prepare empty range", vae_image_prepare(px, 5, 4, 3, sizeof px, &info, 148, img, 192),
           VAE_ERR_INVALID_ARGUMENT, "pixel range [1.000000, 1.000000] is empty");
    info = model(8, 3, -1.f, 1.f);
    expect("to_pixels ok", vae_image_to_pixels(img, 192, &info, out, sizeof out), VAE_OK, NULL);
    expect("to_pixels wrong count", vae_image_to_pixels(img, 191, &info, out, sizeof out), VAE_ERR_SHAPE,
           "image_count is 191, expected 192 (one decoded image: 3 x 8 x 8)");
    expect("to_pixels small buffer", vae_image_to_pixels(img, 192, &info, out, 191), VAE_ERR_SHAPE,
           "pixels holds 191 elements, needs 192");
    expect("resize ok", vae_image_resize(px, 5, 4, 3, sizeof px, out, 64, 64, sizeof out), VAE_OK, NULL);
    expect("resize small buffer", vae_image_resize(px, 5, 4, 3, sizeof px, out, 64, 64, 100), VAE_ERR_SHAPE,
           "out holds 100 elements, needs 12288");
    expect("resize to 0", vae_image_resize(px, 5, 4, 3, sizeof px, out, 0, 3, sizeof out), VAE_ERR_INVALID_ARGUMENT,
           "expected an output size >= 1, got 0x3");
    expect("resize NULL out", vae_image_resize(px, 5, 4, 3, sizeof px, NULL, 3, 3, 27), VAE_ERR_INVALID_ARGUMENT,
           "out is NULL");
    printf("%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}

int main(int argc, char** argv) {
    if (argc == 2 && !strcmp(argv[1], "errors")) return errors();
    if (argc == 9 && !strcmp(argv[1], "resize")) {
        const int w = atoi(argv[3]), h = atoi(argv[4]), c = atoi(argv[5]), ow = atoi(argv[6]), oh = atoi(argv[7]);
        const size_t n = (size_t)w * h * c, on = (size_t)ow * oh * c;
        unsigned char* in = read_all(argv[2], n);
        unsigned char* out = malloc(on);
        int rc = check_status(vae_image_resize(in, w, h, c, n, out, ow, oh, on));
        if (!rc) write_all(argv[8], out, on);
        free(in);
        free(out);
        return rc;
    }
    if (argc == 12 && !strcmp(argv[1], "prepare")) {
        const int w = atoi(argv[3]), h = atoi(argv[4]), c = atoi(argv[5]);
        const vae_model_info info = model(atoi(argv[6]), atoi(argv[7]), (float)atof(argv[9]), (float)atof(argv[10]));
        const size_t n = (size_t)w * h * c, on = (size_t)info.in_channels * info.image_size * info.image_size;
        unsigned char* in = read_all(argv[2], n);
        float* out = malloc(on * sizeof(float));
        int rc = check_status(vae_image_prepare(in, w, h, c, n, &info, atoi(argv[8]), out, on));
        if (!rc) write_all(argv[11], out, on * sizeof(float));
        free(in);
        free(out);
        return rc;
    }
    if (argc == 8 && !strcmp(argv[1], "to_pixels")) {
        const vae_model_info info = model(atoi(argv[4]), atoi(argv[3]), (float)atof(argv[5]), (float)atof(argv[6]));
        const size_t n = (size_t)info.out_channels * info.image_size * info.image_size;
        float* in = read_all(argv[2], n * sizeof(float));
        unsigned char* out = malloc(n);
        int rc = check_status(vae_image_to_pixels(in, n, &info, out, n));
        if (!rc) write_all(argv[7], out, n);
        free(in);
        free(out);
        return rc;
    }
    fprintf(stderr, "usage: vae_image_check resize|prepare|to_pixels ... | errors (see image_check.c)\n");
    return 2;
}
