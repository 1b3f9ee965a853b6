/* fuzz_config.c: the configuration loader on arbitrary INI text (written to a private file). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static char path[64];
        if (!path[0]) {
                char dir[] = "/tmp/vidu-fuzz-config-XXXXXX";
                if (!mkdtemp(dir))
                        abort();
                snprintf(path, sizeof(path), "%s/fuzz.conf", dir);
                unsetenv("CREDENTIALS_DIRECTORY");
        }
        FILE *f = fopen(path, "w");
        if (!f)
                abort();
        fwrite(data, 1, size, f);
        fclose(f);
        struct config *cfg = NULL;
        struct config_errors errors = {0};
        if (config_load(path, &cfg, &errors) >= 0) {
                FILE *null = fopen("/dev/null", "w");
                if (null) {
                        config_dump(cfg, null);
                        fclose(null);
                }
                config_free(cfg);
        }
        config_errors_clear(&errors);
        return 0;
}
