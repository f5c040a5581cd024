/*
 * c_abi_check.c - a plain C99 program that drives the C ABI (vae_runtime.h); tests/runtime/cpp/test_cpp_runtime.py runs it.
 *
 *   vae_c_abi_check info   BUNDLE                          print the model info (and vae_runtime_center_crop), one
 *                                                          key=value per line
 *   vae_c_abi_check open   BUNDLE [key=value ...]          create with options (backend= device= precision=
 *                                                          graphs= verify_sha256=0), print status= and error= lines
 *   vae_c_abi_check decode BUNDLE Z.f32 OUT.f32            raw float32 files; the batch is the count / latent_dim
 *   vae_c_abi_check encode BUNDLE IMAGE.f32 MU.f32 LOGVAR.f32
 *   vae_c_abi_check errors BUNDLE                          misuse battery: every case checks status and message
 *
 * Exit codes: 0 ok, 1 a check failed or a call returned an error (printed), 2 usage.
 */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vae_image.h" /* vae_runtime_center_crop */
#include "vae_runtime.h"

static int failures = 0;

static void check(int ok, const char* name, const char* detail) {
    printf("%s %s%s%s\n", ok ? "ok" : "FAIL", name, detail && !ok ? ": " : "", detail && !ok ? detail : "");
    if (!ok) ++failures;
}

/* The status and the message must both say what went wrong. */
static void expect(vae_status got, vae_status want, const char* needle, const char* name) {
    char detail[1024];
    const char* msg = vae_last_error();
    snprintf(detail, sizeof detail, "status %s (want %s), message '%s' (want it to contain '%s')",
             vae_status_name(got), vae_status_name(want), msg, needle);
    check(got == want && strstr(msg, needle) != NULL, name, detail);
}

static float* read_f32(const char* path, size_t* count) {
    FILE* f = fopen(path, "rb");
    long n;
    float* data;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    data = (float*)malloc(n > 0 ? (size_t)n : 1);
    if (data && fread(data, 1, (size_t)n, f) != (size_t)n) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *count = (size_t)n / sizeof(float);
    return data;
}

static int write_f32(const char* path, const float* data, size_t count) {
    FILE* f = fopen(path, "wb");
    int ok = f && fwrite(data, sizeof(float), count, f) == count;
    if (f) ok = (fclose(f) == 0) && ok;
    return ok;
}

static vae_runtime* open_or_report(const char* bundle, const vae_options* opt) {
    vae_runtime* rt = NULL;
    vae_status s = vae_runtime_create(bundle, opt, &rt);
    if (s != VAE_OK) fprintf(stderr, "error: %s: %s\n", vae_status_name(s), vae_last_error());
    return rt;
}

static int get_info(vae_runtime* rt, vae_model_info* info) {
    info->struct_size = sizeof *info;
    return vae_runtime_info(rt, info) == VAE_OK;
}

static int cmd_info(const char* bundle) {
    vae_model_info info;
    int32_t crop = 0;
    vae_runtime* rt = open_or_report(bundle, NULL);
    if (!rt || !get_info(rt, &info)) return 1;
    if (vae_runtime_center_crop(rt, &crop) != VAE_OK) return 1;
    printf("in_channels=%d\nout_channels=%d\nimage_size=%d\nlatent_dim=%d\npixel_min=%g\npixel_max=%g\n"
           "has_encoder=%d\nhas_decoder=%d\ncenter_crop=%d\nbackend=%s\nversion=%s\nabi=%d\n",
           info.in_channels, info.out_channels, info.image_size, info.latent_dim, info.pixel_min, info.pixel_max,
           info.has_encoder, info.has_decoder, (int)crop, vae_runtime_backend(rt), vae_version(), vae_abi_version());
    vae_runtime_destroy(rt);
    return 0;
}

/* vae_options as first published (before batch_split was appended) */
typedef struct vae_options_v1 {
    uint32_t struct_size;
    const char* backend;
    const char* device;
    const char* precision;
    const char* execution_provider;
    const char* graphs;
    int32_t threads;
    int32_t check_finite;
    int32_t verify_sha256;
} vae_options_v1;

/* vae_options of the second header (batch_split and reserved appended, before dla_core) */
typedef struct vae_options_v2 {
    uint32_t struct_size;
    const char* backend;
    const char* device;
    const char* precision;
    const char* execution_provider;
    const char* graphs;
    int32_t threads;
    int32_t check_finite;
    int32_t verify_sha256;
    int32_t batch_split;
    int32_t reserved;
} vae_options_v2;

static int cmd_open(const char* bundle, int argc, char** argv) {
    vae_options opt;
    vae_runtime* rt = NULL;
    vae_status s;
    int i, first_layout = 0, second_layout = 0;
    union { vae_options aligned; unsigned char bytes[sizeof(vae_options) + 64]; } storage;
    unsigned char* garbage = storage.bytes;
    vae_options_init(&opt);
    for (i = 0; i < argc; ++i) {
        char* eq = strchr(argv[i], '=');
        if (!eq) return 2;
        *eq = '\0';
        if (!strcmp(argv[i], "backend")) opt.backend = eq + 1;
        else if (!strcmp(argv[i], "device")) opt.device = eq + 1;
        else if (!strcmp(argv[i], "precision")) opt.precision = eq + 1;
        else if (!strcmp(argv[i], "graphs")) opt.graphs = eq + 1;
        else if (!strcmp(argv[i], "execution_provider")) opt.execution_provider = eq + 1;
        else if (!strcmp(argv[i], "verify_sha256")) opt.verify_sha256 = atoi(eq + 1);
        else if (!strcmp(argv[i], "threads")) opt.threads = atoi(eq + 1);
        else if (!strcmp(argv[i], "batch_split")) opt.batch_split = atoi(eq + 1);
        else if (!strcmp(argv[i], "dla_core")) opt.dla_core = atoi(eq + 1);
        else if (!strcmp(argv[i], "struct_size")) opt.struct_size = (uint32_t)atoi(eq + 1);
        else if (!strcmp(argv[i], "first_layout")) first_layout = atoi(eq + 1);
        else if (!strcmp(argv[i], "second_layout")) second_layout = atoi(eq + 1);
        else return 2;
    }
    if (first_layout == 2) {
        /* the first header's vae_options_init symbol must write nothing past the first layout */
        size_t k;
        memset(storage.bytes, 0xfe, sizeof storage.bytes);
        (vae_options_init)((vae_options*)(void*)storage.bytes);
        for (k = sizeof(vae_options_v1); k < sizeof storage.bytes; ++k)
            if (storage.bytes[k] != 0xfe) {
                printf("status=OVERFLOW\nerror=byte %u past the first layout was written\n", (unsigned)k);
                return 1;
            }
        printf("init_struct_size=%u\nfirst_layout_size=%u\n",
               (unsigned)((vae_options*)(void*)storage.bytes)->struct_size, (unsigned)sizeof(vae_options_v1));
        s = vae_runtime_create(bundle, (const vae_options*)(const void*)storage.bytes, &rt);
    } else if (first_layout) {
        /* A caller compiled against the first header: its struct ends at verify_sha256 (plus padding). It sits in a
           buffer whose bytes past that struct are garbage, which the library must not read as batch_split. */
        vae_options_v1 v1;
        memset(&v1, 0xfe, sizeof v1); /* its tail padding too: on LP64 that is where batch_split now lives */
        v1.struct_size = sizeof v1;
        v1.backend = opt.backend;
        v1.device = opt.device;
        v1.precision = opt.precision;
        v1.execution_provider = opt.execution_provider;
        v1.graphs = opt.graphs;
        v1.threads = opt.threads;
        v1.check_finite = opt.check_finite;
        v1.verify_sha256 = opt.verify_sha256;
        memset(storage.bytes, 0xfe, sizeof storage.bytes);
        memcpy(garbage, &v1, sizeof v1);
        s = vae_runtime_create(bundle, (const vae_options*)(const void*)garbage, &rt);
    } else if (second_layout) {
        /* A caller compiled against the second header: garbage past its struct must not be read as dla_core. */
        vae_options_v2 v2;
        memset(&v2, 0xfe, sizeof v2);
        memcpy(&v2, &opt, offsetof(vae_options, reserved) + sizeof opt.reserved);
        v2.struct_size = sizeof v2;
        memset(storage.bytes, 0xfe, sizeof storage.bytes);
        memcpy(garbage, &v2, sizeof v2);
        printf("second_layout_size=%u\n", (unsigned)sizeof v2);
        s = vae_runtime_create(bundle, (const vae_options*)(const void*)garbage, &rt);
    } else {
        s = vae_runtime_create(bundle, &opt, &rt);
    }
    printf("status=%s\nerror=%s\n", vae_status_name(s), vae_last_error());
    if (s == VAE_OK) printf("backend=%s\n", vae_runtime_backend(rt));
    vae_runtime_destroy(rt);
    return s == VAE_OK ? 0 : 1;
}

static int cmd_decode(const char* bundle, const char* zpath, const char* outpath) {
    vae_model_info info;
    size_t n = 0, per, batch;
    float *z, *out;
    vae_status s;
    vae_runtime* rt = open_or_report(bundle, NULL);
    if (!rt || !get_info(rt, &info)) return 1;
    z = read_f32(zpath, &n);
    if (!z) { fprintf(stderr, "error: cannot read %s\n", zpath); return 1; }
    batch = n / (size_t)info.latent_dim;
    per = (size_t)info.out_channels * info.image_size * info.image_size;
    out = (float*)malloc(batch * per * sizeof(float) + 1);
    s = vae_decode(rt, z, (int64_t)batch, n, out, batch * per);
    if (s != VAE_OK) fprintf(stderr, "error: %s: %s\n", vae_status_name(s), vae_last_error());
    else if (!write_f32(outpath, out, batch * per)) { fprintf(stderr, "error: cannot write %s\n", outpath); s = VAE_ERR_INTERNAL; }
    free(z);
    free(out);
    vae_runtime_destroy(rt);
    return s == VAE_OK ? 0 : 1;
}

static int cmd_encode(const char* bundle, const char* inpath, const char* mupath, const char* lvpath) {
    vae_model_info info;
    size_t n = 0, per, batch, d;
    float *img, *mu, *lv;
    vae_status s;
    vae_runtime* rt = open_or_report(bundle, NULL);
    if (!rt || !get_info(rt, &info)) return 1;
    img = read_f32(inpath, &n);
    if (!img) { fprintf(stderr, "error: cannot read %s\n", inpath); return 1; }
    per = (size_t)info.in_channels * info.image_size * info.image_size;
    batch = n / per;
    d = (size_t)info.latent_dim;
    mu = (float*)malloc(batch * d * sizeof(float) + 1);
    lv = (float*)malloc(batch * d * sizeof(float) + 1);
    s = vae_encode(rt, img, (int64_t)batch, n, mu, batch * d, lv, batch * d);
    if (s != VAE_OK) fprintf(stderr, "error: %s: %s\n", vae_status_name(s), vae_last_error());
    else if (!write_f32(mupath, mu, batch * d) || !write_f32(lvpath, lv, batch * d)) s = VAE_ERR_INTERNAL;
    free(img);
    free(mu);
    free(lv);
    vae_runtime_destroy(rt);
    return s == VAE_OK ? 0 : 1;
}

/* The last error is per thread: a failure on another thread must not show up here. */
static void* fail_on_other_thread(void* arg) {
    vae_runtime* rt = NULL;
    vae_status s = vae_runtime_create("/nonexistent/bundle", NULL, &rt);
    (void)arg;
    return (void*)(size_t)(s == VAE_ERR_BUNDLE && strstr(vae_last_error(), "/nonexistent/bundle") != NULL);
}

/* Several threads decoding through one handle at once must each get the single-threaded answer. */
typedef struct {
    vae_runtime* rt;
    const float* z;
    const float* want;
    size_t D, P;
    int ok;
} decode_job;

static void* decode_concurrently(void* arg) {
    decode_job* job = (decode_job*)arg;
    float* out = (float*)malloc(4 * job->P * sizeof(float));
    int round;
    job->ok = out != NULL;
    for (round = 0; job->ok && round < 20; ++round)
        job->ok = vae_decode(job->rt, job->z, 4, 4 * job->D, out, 4 * job->P) == VAE_OK &&
                  memcmp(out, job->want, 4 * job->P * sizeof(float)) == 0;
    free(out);
    return NULL;
}

static int cmd_errors(const char* bundle) {
    vae_options opt;
    vae_model_info info;
    vae_runtime *rt = NULL, *dec_only = NULL, *unused = (vae_runtime*)1;
    size_t D, P, I;
    float *z, *img, *mu, *lv;
    pthread_t th;
    void* th_ok = NULL;
    vae_status s;
    char needle[256];

    expect(vae_runtime_create(bundle, NULL, NULL), VAE_ERR_INVALID_ARGUMENT, "out is NULL", "create_null_out");
    expect(vae_runtime_create(NULL, NULL, &unused), VAE_ERR_INVALID_ARGUMENT, "bundle is NULL", "create_null_bundle");
    check(unused == NULL, "create_failure_sets_out_null", "*out was not reset to NULL");
    expect(vae_runtime_create("/nonexistent/bundle", NULL, &rt), VAE_ERR_BUNDLE, "/nonexistent/bundle", "missing_bundle");
    vae_options_init(&opt);
    opt.struct_size = 3;
    expect(vae_runtime_create(bundle, &opt, &rt), VAE_ERR_INVALID_ARGUMENT, "struct_size", "bad_struct_size");
    vae_options_init(&opt);
    opt.backend = "tflite";
    expect(vae_runtime_create(bundle, &opt, &rt), VAE_ERR_INVALID_ARGUMENT, "'tflite'", "unknown_backend");
    vae_options_init(&opt);
    opt.device = "gpu0";
    expect(vae_runtime_create(bundle, &opt, &rt), VAE_ERR_INVALID_ARGUMENT, "'gpu0'", "bad_device");
    vae_options_init(&opt);
    opt.precision = "fp8";
    expect(vae_runtime_create(bundle, &opt, &rt), VAE_ERR_INVALID_ARGUMENT, "'fp8'", "bad_precision");
    vae_options_init(&opt);
    opt.precision = "int8";
    expect(vae_runtime_create(bundle, &opt, &rt), VAE_ERR_UNAVAILABLE, "no 'int8' variant", "missing_variant");
    vae_options_init(&opt);
    opt.device = "cuda:0";
    expect(vae_runtime_create(bundle, &opt, &rt), VAE_ERR_UNAVAILABLE, "CUDAExecutionProvider", "cuda_without_provider");
    vae_options_init(&opt);
    opt.backend = "tensorrt";
    opt.device = "cuda";
    s = vae_runtime_create(bundle, &opt, &rt);
    check(s == VAE_ERR_UNAVAILABLE || s == VAE_ERR_ENGINE_MISMATCH, "tensorrt_unavailable_here", vae_last_error());
    vae_runtime_destroy(rt);
    rt = NULL;

    rt = open_or_report(bundle, NULL);
    if (!rt) return 1;
    check(strcmp(vae_last_error(), "") == 0, "success_clears_last_error", vae_last_error());
    info.struct_size = 1;
    expect(vae_runtime_info(rt, &info), VAE_ERR_INVALID_ARGUMENT, "struct_size", "info_bad_struct_size");
    {
        int32_t crop = -7;
        expect(vae_runtime_center_crop(NULL, &crop), VAE_ERR_INVALID_ARGUMENT, "runtime or center_crop is NULL",
               "center_crop_null_runtime");
        expect(vae_runtime_center_crop(rt, NULL), VAE_ERR_INVALID_ARGUMENT, "runtime or center_crop is NULL",
               "center_crop_null_out");
        check(crop == -7, "center_crop_failure_leaves_out_alone", "*center_crop was written on failure");
        check(vae_runtime_center_crop(rt, &crop) == VAE_OK && crop >= 1 && strcmp(vae_last_error(), "") == 0,
              "center_crop_ok", vae_last_error());
    }
    if (!get_info(rt, &info)) return 1;
    D = (size_t)info.latent_dim;
    P = (size_t)info.out_channels * info.image_size * info.image_size;
    I = (size_t)info.in_channels * info.image_size * info.image_size;
    z = (float*)calloc(4 * D, sizeof(float));
    img = (float*)calloc(4 * (P > I ? P : I), sizeof(float));
    mu = (float*)calloc(4 * D, sizeof(float));
    lv = (float*)calloc(4 * D, sizeof(float));

    expect(vae_decode(NULL, z, 2, 2 * D, img, 2 * P), VAE_ERR_INVALID_ARGUMENT, "runtime is NULL", "decode_null_runtime");
    expect(vae_decode(rt, NULL, 2, 2 * D, img, 2 * P), VAE_ERR_INVALID_ARGUMENT, "tensor 'z'", "decode_null_z");
    expect(vae_decode(rt, z, 2, 2 * D - 1, img, 2 * P), VAE_ERR_SHAPE, "tensor 'z'", "decode_wrong_count");
    expect(vae_decode(rt, z, 2, 3 * D, img, 3 * P), VAE_ERR_SHAPE, "that is a batch of 3", "decode_count_batch_mismatch");
    expect(vae_decode(rt, z, 2, 2 * D, img, 2 * P - 1), VAE_ERR_SHAPE, "output 'image'", "decode_small_output");
    /* The batch comes before the count (and vae::Runtime::decode / encode take them in that order too). A call with
       the two swapped is refused and the message reads the batch from the third argument, not the fourth; were they
       swapped on the way to C++ (c_api.cpp), this call would succeed and the error-free one above would fail. */
    snprintf(needle, sizeof needle, "tensor 'z': expected shape (N, %u) with N = %u,", (unsigned)D, (unsigned)(2 * D));
    expect(vae_decode(rt, z, (int64_t)(2 * D), 2, img, 2 * P), VAE_ERR_SHAPE, needle, "decode_batch_count_swapped");
    snprintf(needle, sizeof needle, "floats, got %u (that is a batch of 2, not 3)", (unsigned)(2 * D));
    expect(vae_decode(rt, z, 3, 2 * D, img, 3 * P), VAE_ERR_SHAPE, needle, "decode_batch_is_the_third_argument");
    expect(vae_decode(rt, z, 0, 0, img, 0), VAE_ERR_SHAPE, "empty batch", "decode_empty_batch");
    expect(vae_decode(rt, z, -1, 0, img, 0), VAE_ERR_INVALID_ARGUMENT, "negative", "decode_negative_batch");
    z[D + 3] = NAN;
    z[D + 5] = INFINITY;
    expect(vae_decode(rt, z, 2, 2 * D, img, 2 * P), VAE_ERR_NON_FINITE, "1 NaN and 1 Inf value(s), first at index (1, 3)",
           "decode_nan");
    z[D + 3] = 0.f;
    z[D + 5] = 0.f;
    expect(vae_encode(rt, img, 2, 2 * I + 1, mu, 2 * D, lv, 2 * D), VAE_ERR_SHAPE, "tensor 'image'", "encode_wrong_count");
    expect(vae_encode(rt, img, 2, 2 * I, mu, 2 * D, lv, D), VAE_ERR_SHAPE, "output 'logvar'", "encode_small_logvar");
    snprintf(needle, sizeof needle, "tensor 'image': expected shape (N, %d, %d, %d) with N = %u,", info.in_channels,
             info.image_size, info.image_size, (unsigned)(2 * I));
    expect(vae_encode(rt, img, (int64_t)(2 * I), 2, mu, 2 * D, lv, 2 * D), VAE_ERR_SHAPE, needle,
           "encode_batch_count_swapped");
    snprintf(needle, sizeof needle, "floats, got %u (that is a batch of 2, not 3)", (unsigned)(2 * I));
    expect(vae_encode(rt, img, 3, 2 * I, mu, 3 * D, lv, 3 * D), VAE_ERR_SHAPE, needle,
           "encode_batch_is_the_third_argument");
    img[7] = NAN;
    expect(vae_encode(rt, img, 2, 2 * I, mu, 2 * D, lv, 2 * D), VAE_ERR_NON_FINITE, "tensor 'image'", "encode_nan");
    img[7] = 0.f;

    s = vae_decode(rt, z, 4, 4 * D, img, 4 * P);
    check(s == VAE_OK && strcmp(vae_last_error(), "") == 0, "decode_ok_clears_error", vae_last_error());
    s = vae_encode(rt, img, 4, 4 * I, mu, 4 * D, lv, 4 * D);
    check(s == VAE_OK, "encode_ok", vae_last_error());

    {
        decode_job jobs[4];
        pthread_t threads[4];
        float* want = (float*)malloc(4 * P * sizeof(float));
        size_t k;
        int all_ok = 1;
        for (k = 0; k < 4 * D; ++k) z[k] = (float)((int)(k % 7) - 3) * 0.25f;
        vae_decode(rt, z, 4, 4 * D, want, 4 * P);
        for (k = 0; k < 4; ++k) {
            decode_job j = {rt, z, want, D, P, 0};
            jobs[k] = j;
            pthread_create(&threads[k], NULL, decode_concurrently, &jobs[k]);
        }
        for (k = 0; k < 4; ++k) {
            pthread_join(threads[k], NULL);
            all_ok = all_ok && jobs[k].ok;
        }
        check(all_ok, "concurrent_decode_same_answer", "a thread got an error or a different result");
        free(want);
    }

    /* An error on this thread, then a failure on another: each thread sees its own message. */
    vae_decode(rt, z, 2, 1, img, 2 * P);
    pthread_create(&th, NULL, fail_on_other_thread, NULL);
    pthread_join(th, &th_ok);
    check(th_ok != NULL, "other_thread_has_its_own_error", "the other thread's message was wrong");
    check(strstr(vae_last_error(), "tensor 'z'") != NULL, "error_is_thread_local", vae_last_error());

    vae_options_init(&opt);
    opt.graphs = "decoder";
    s = vae_runtime_create(bundle, &opt, &dec_only);
    check(s == VAE_OK, "decoder_only_opens", vae_last_error());
    if (dec_only) {
        expect(vae_encode(dec_only, img, 1, I, mu, D, lv, D), VAE_ERR_UNAVAILABLE, "not loaded", "encode_on_decoder_only");
        check(get_info(dec_only, &info) && info.has_decoder && !info.has_encoder, "decoder_only_info", NULL);
    }
    vae_options_init(&opt);
    opt.graphs = "decoder,flow";
    expect(vae_runtime_create(bundle, &opt, &unused), VAE_ERR_UNAVAILABLE, "no 'flow' graph",
           "unknown_graph");

    check(strcmp(vae_status_name((vae_status)99), "VAE_ERR_UNKNOWN") == 0, "status_name_unknown", NULL);
    check(strcmp(vae_runtime_backend(NULL), "") == 0, "backend_null_handle", NULL);
    vae_runtime_destroy(NULL); /* accepted */
    vae_runtime_destroy(dec_only);
    vae_runtime_destroy(rt);
    free(z);
    free(img);
    free(mu);
    free(lv);
    printf("%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}

int main(int argc, char** argv) {
    if (argc >= 3 && !strcmp(argv[1], "info")) return cmd_info(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "open")) return cmd_open(argv[2], argc - 3, argv + 3);
    if (argc == 5 && !strcmp(argv[1], "decode")) return cmd_decode(argv[2], argv[3], argv[4]);
    if (argc == 6 && !strcmp(argv[1], "encode")) return cmd_encode(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 3 && !strcmp(argv[1], "errors")) return cmd_errors(argv[2]);
    fprintf(stderr, "usage: vae_c_abi_check info|open|decode|encode|errors BUNDLE ...\n");
    return 2;
}
