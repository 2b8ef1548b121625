/*
 * Runs the safety board firmware on a simulated ATmega328P (simavr) and wires it to the outside world.
 *
 *   harness [--lockstep] [--seed N] FIRMWARE.elf
 *
 * Real-time mode (the default): simulated time follows the wall clock (16 000 000 cycles a second). The UART
 * is connected to a pseudo-terminal, whose path is the first line printed; a driver opens it like the board's
 * USB serial port. Lock-step mode (--lockstep): time only moves on "RUN <cycles>", and the UART is reached with
 * "RX" lines in and "TX" lines out, so tests measure in exact cycles.
 *
 * Pins are exchanged as text lines, one per event, on stdin (to the board) and stdout (from the board); every
 * line from the harness ends with the cycle count at which it happened.
 *
 * stdin (each answered "OK <cycle>", or "ERR <reason>"):
 *   PEDAL <0|1>          footpedal released/pressed (pin D2: 1 -> low, switch to ground)
 *   ESTOP <0|1>          E-stop released/pressed (pin D3: 1 -> high, normally-closed contact opens)
 *   ADC <channel> <mV>   analog input voltage, 0..5000 mV (channel 0 photodiode, 1 vibration at 1 V per g)
 *   RX <hex>             lock-step only: bytes for the UART, delivered at line rate
 *   FLOOD <0|1>          keep the UART input saturated with random bytes (an LF every 250 bytes, so the
 *                        board also sees and answers over-long lines); lock-step and real time
 *   RUN <cycles>         lock-step only: run that many cycles, then answer "T <cycle>" instead of OK
 *   STACK                answered "STACK <lowest stack pointer seen> <cycle>" (the deepest stack so far)
 *   QUIT                 end (so does the end of stdin)
 *
 * stdout:
 *   PTY <path>           real time only, first line: the board's serial port
 *   READY <cycle>        the firmware is loaded and running
 *   L <0|1> <cycle>      LASER_ENABLE output level (D8; an input pin counts as low: pull-down)
 *   M <0-255> <cycle>    smoothing motor PWM duty (OC0A compare value; 0 when the output is disconnected)
 *   B <0|1> <cycle>      aiming beam output (D7)
 *   RESET <cycle>        the chip was reset (its own watchdog)
 *   TX <hex> <cycle>     lock-step only: one line the board sent (up to and including LF)
 *   CRASH <cycle>        the simulated core stopped (invalid instruction, ...); the harness exits 3
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <pty.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <avr_adc.h>
#include <avr_ioport.h>
#include <avr_uart.h>
#include <sim_avr.h>
#include <sim_elf.h>
#include <sim_io.h>
#include <sim_irq.h>

#define F_CPU 16000000ULL
#define QUEUE_SIZE 65536
#define FLOOD_LINE 250
#define SWITCH_GAP_CYCLES 2000ULL

static avr_t *avr;
static int lockstep;
static int pty_master = -1;
static int pty_slave = -1;

/* Bytes waiting to go into the UART receiver. */
static uint8_t rx_queue[QUEUE_SIZE];
static size_t rx_head, rx_tail;
static int uart_xon = 1;
static int flood;
static unsigned flood_count;
static uint32_t rng_state = 1;

/* Outputs as last reported. */
static uint8_t portb, ddrb, portd, ddrd, tccr0a, ocr0a;
static int told_enable = -1, told_beam = -1, told_duty = -1;
static int reset_seen;
static void (*core_reset)(avr_t *);

/* Line being sent by the board, lock-step mode. */
static char tx_line[512];
static size_t tx_len;

/* Input pin levels as last driven. */
static int pedal_pressed, estop_pressed;
static avr_irq_t *pin_pedal, *pin_estop, *adc_irq;
static uint32_t adc_mv[2];

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf(" %llu\n", (unsigned long long)avr->cycle);
    fflush(stdout);
}

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static void report_outputs(void)
{
    int enable = (portb & ddrb & 0x01) ? 1 : 0;
    int beam = (portd & ddrd & 0x80) ? 1 : 0;
    int duty = (tccr0a & 0x80) ? ocr0a : 0;
    if (enable != told_enable) {
        told_enable = enable;
        out("L %d", enable);
    }
    if (beam != told_beam) {
        told_beam = beam;
        out("B %d", beam);
    }
    if (duty != told_duty) {
        told_duty = duty;
        out("M %d", duty);
    }
}

static void on_write(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    *(uint8_t *)param = (uint8_t)value;
    report_outputs();
}

static void watch(avr_io_addr_t addr, uint8_t *store)
{
    avr_irq_register_notify(avr_iomem_getirq(avr, addr, NULL, 8), on_write, store);
}

/* The switches drive D2 and D3 harder than the internal pull-ups: declared as the port's external levels, so
 * a write to PORTD (which enables the pull-ups) does not pull them high. */
static void drive_switches(void)
{
    int pedal_level = pedal_pressed ? 0 : 1;
    int estop_level = estop_pressed ? 1 : 0;
    avr_ioport_external_t ext = {
        .name = 'D', .mask = 0x0C, .value = (unsigned long)((pedal_level << 2) | (estop_level << 3))};
    avr_ioctl(avr, AVR_IOCTL_IOPORT_SET_EXTERNAL('D'), &ext);
    avr_raise_irq(pin_pedal, (uint32_t)pedal_level);
    avr_raise_irq(pin_estop, (uint32_t)estop_level);
}

static void drive_inputs(void)
{
    drive_switches();
    avr_raise_irq(adc_irq + ADC_IRQ_ADC0, adc_mv[0]);
    avr_raise_irq(adc_irq + ADC_IRQ_ADC1, adc_mv[1]);
}

static void on_reset(avr_t *core)
{
    if (core_reset != NULL) {
        core_reset(core);
    }
    reset_seen = 1;
}

static void on_uart_output(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    (void)param;
    uint8_t byte = (uint8_t)value;
    if (lockstep) {
        if (tx_len < sizeof tx_line) {
            tx_line[tx_len++] = (char)byte;
        }
        if (byte == '\n' || tx_len == sizeof tx_line) {
            char hex[2 * sizeof tx_line + 1];
            for (size_t i = 0; i < tx_len; i++) {
                sprintf(hex + 2 * i, "%02x", (uint8_t)tx_line[i]);
            }
            hex[2 * tx_len] = 0;
            out("TX %s", hex);
            tx_len = 0;
        }
        return;
    }
    if (pty_master >= 0) {
        /* A full pty drops the byte, as a real UART overruns a host that does not read. */
        ssize_t n = write(pty_master, &byte, 1);
        (void)n;
    }
}

static void on_xon(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    (void)value;
    (void)param;
    uart_xon = 1;
}

static void on_xoff(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    (void)value;
    (void)param;
    uart_xon = 0;
}

static avr_irq_t *uart_irq;

static void feed_uart(void)
{
    while (uart_xon) {
        uint8_t byte;
        if (rx_head != rx_tail) {
            byte = rx_queue[rx_tail];
            rx_tail = (rx_tail + 1) % QUEUE_SIZE;
        } else if (flood) {
            if (++flood_count % FLOOD_LINE == 0) {
                byte = '\n';
            } else {
                do {
                    byte = (uint8_t)rng();
                } while (byte == '\n');
            }
        } else {
            return;
        }
        avr_raise_irq(uart_irq + UART_IRQ_INPUT, byte);
    }
}

static void queue_rx(const uint8_t *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t next = (rx_head + 1) % QUEUE_SIZE;
        if (next == rx_tail) {
            return; /* overrun: the rest is lost */
        }
        rx_queue[rx_head] = data[i];
        rx_head = next;
    }
}

/* simavr's own sleep handling waits in real time; the harness paces time itself (or not at all). */
static void no_wait(avr_t *core, avr_cycle_count_t how_long)
{
    (void)core;
    (void)how_long;
}

/* Lowest stack pointer seen (the deepest stack), for the "STACK" command. */
static uint16_t min_sp = 0xFFFF;

static int step(void)
{
    int state = avr_run(avr);
    uint16_t sp = (uint16_t)(avr->data[0x5D] | (avr->data[0x5E] << 8));
    if (sp < min_sp && sp != 0) {
        min_sp = sp;
    }
    if (reset_seen) {
        reset_seen = 0;
        portb = ddrb = portd = ddrd = tccr0a = ocr0a = 0;
        out("RESET");
        report_outputs();
        drive_inputs();
    }
    if (state == cpu_Done || state == cpu_Crashed) {
        out("CRASH");
        return -1;
    }
    feed_uart();
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* One command line; returns 1 to quit, -1 on a crash. */
static int command(char *line)
{
    char word[16];
    unsigned long long a = 0, b = 0;
    int fields = sscanf(line, "%15s %llu %llu", word, &a, &b);
    if (fields < 1) {
        return 0;
    }
    if (strcmp(word, "QUIT") == 0) {
        return 1;
    }
    if (strcmp(word, "PEDAL") == 0 && fields == 2 && a <= 1) {
        pedal_pressed = (int)a;
        drive_switches();
    } else if (strcmp(word, "ESTOP") == 0 && fields == 2 && a <= 1) {
        estop_pressed = (int)a;
        drive_switches();
    } else if (strcmp(word, "ADC") == 0 && fields == 3 && a <= 1 && b <= 5000) {
        adc_mv[a] = (uint32_t)b;
        avr_raise_irq(adc_irq + ADC_IRQ_ADC0 + a, (uint32_t)b);
    } else if (strcmp(word, "STACK") == 0) {
        out("STACK %u", (unsigned)min_sp);
        return 0;
    } else if (strcmp(word, "FLOOD") == 0 && fields == 2 && a <= 1) {
        flood = (int)a;
    } else if (strcmp(word, "RX") == 0 && lockstep) {
        char *hex = line + 2;
        while (*hex == ' ') hex++;
        uint8_t buf[1024];
        size_t n = 0;
        while (hexval(hex[0]) >= 0 && hexval(hex[1]) >= 0 && n < sizeof buf) {
            buf[n++] = (uint8_t)(hexval(hex[0]) << 4 | hexval(hex[1]));
            hex += 2;
        }
        queue_rx(buf, n);
        feed_uart();
    } else if (strcmp(word, "RUN") == 0 && lockstep && fields == 2) {
        avr_cycle_count_t end = avr->cycle + a;
        while (avr->cycle < end) {
            if (step() < 0) {
                return -1;
            }
        }
        out("T");
        return 0;
    } else {
        printf("ERR bad command: %s\n", line);
        fflush(stdout);
        return 0;
    }
    out("OK");
    if (!lockstep && (strcmp(word, "PEDAL") == 0 || strcmp(word, "ESTOP") == 0)) {
        /* Switch changes that arrive together are still apart in simulated time (125 us), as real contacts
         * are, so the firmware sees every edge. */
        avr_cycle_count_t end = avr->cycle + SWITCH_GAP_CYCLES;
        while (avr->cycle < end) {
            if (step() < 0) {
                return -1;
            }
        }
    }
    return 0;
}

static char in_buf[8192];
static size_t in_len;

/* Reads what stdin has; runs every complete line. Returns 1 at the end of input or QUIT, -1 on a crash. */
static int read_commands(void)
{
    ssize_t n = read(STDIN_FILENO, in_buf + in_len, sizeof in_buf - 1 - in_len);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return 0;
        }
        return 1;
    }
    in_len += (size_t)n;
    char *start = in_buf;
    char *nl;
    while ((nl = memchr(start, '\n', in_len - (size_t)(start - in_buf))) != NULL) {
        *nl = 0;
        int r = command(start);
        start = nl + 1;
        if (r != 0) {
            return r;
        }
    }
    in_len -= (size_t)(start - in_buf);
    memmove(in_buf, start, in_len);
    if (in_len == sizeof in_buf - 1) {
        in_len = 0; /* a line this long is no command */
    }
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Simulated time follows the wall clock. Inputs are looked at after at most SLICE cycles, so a host that is
 * short of CPU sees replies late by at most about that much; when the simulation falls more than MAX_LAG
 * behind, the backlog is dropped and the simulated clock runs slow for a moment instead (the firmware's
 * timings stretch, never shrink). */
#define SLICE_CYCLES 16000ULL
#define MAX_LAG_CYCLES (F_CPU / 20ULL)

static int run_realtime(void)
{
    uint64_t start_ns = now_ns();
    avr_cycle_count_t start_cycle = avr->cycle;
    uint8_t buf[4096];
    for (;;) {
        uint64_t elapsed = now_ns() - start_ns;
        avr_cycle_count_t target = start_cycle + (avr_cycle_count_t)(elapsed * F_CPU / 1000000000ULL);
        if (target > avr->cycle + MAX_LAG_CYCLES) {
            start_cycle -= target - avr->cycle - MAX_LAG_CYCLES;
            target = avr->cycle + MAX_LAG_CYCLES;
        }
        avr_cycle_count_t slice_end = avr->cycle + SLICE_CYCLES;
        if (target > slice_end) {
            target = slice_end;
        }
        while (avr->cycle < target) {
            if (step() < 0) {
                return 3;
            }
        }
        int behind = (avr_cycle_count_t)(start_cycle + (now_ns() - start_ns) * F_CPU / 1000000000ULL) > avr->cycle;
        struct pollfd fds[2] = {
            {.fd = STDIN_FILENO, .events = POLLIN},
            {.fd = pty_master, .events = POLLIN},
        };
        int ready = poll(fds, 2, behind ? 0 : 1);
        if (ready < 0 && errno != EINTR) {
            return 1;
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            int r = read_commands();
            if (r != 0) {
                return r < 0 ? 3 : 0;
            }
        }
        if (fds[1].revents & POLLIN) {
            ssize_t n = read(pty_master, buf, sizeof buf);
            if (n > 0) {
                queue_rx(buf, (size_t)n);
                feed_uart();
            }
        }
    }
}

static int run_lockstep(void)
{
    for (;;) {
        int r = read_commands();
        if (r != 0) {
            return r < 0 ? 3 : 0;
        }
    }
}

static int open_port(void)
{
    if (openpty(&pty_master, &pty_slave, NULL, NULL, NULL) < 0) {
        perror("harness: openpty");
        return -1;
    }
    struct termios tio;
    tcgetattr(pty_slave, &tio);
    cfmakeraw(&tio);
    tcsetattr(pty_slave, TCSANOW, &tio);
    fcntl(pty_master, F_SETFL, fcntl(pty_master, F_GETFL) | O_NONBLOCK);
    /* The slave stays open here, so the master never reads EIO while no driver has the port open. */
    printf("PTY %s\n", ttyname(pty_slave));
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    const char *elf = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--lockstep") == 0) {
            lockstep = 1;
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            rng_state = (uint32_t)strtoul(argv[++i], NULL, 10) * 2654435761u + 1u;
        } else {
            elf = argv[i];
        }
    }
    if (elf == NULL) {
        fprintf(stderr, "usage: harness [--lockstep] [--seed N] FIRMWARE.elf\n");
        return 2;
    }
    /* simavr reports what it loads on stdout, which is the event channel: send that to stderr. */
    fflush(stdout);
    int saved_stdout = dup(STDOUT_FILENO);
    dup2(STDERR_FILENO, STDOUT_FILENO);
    elf_firmware_t firmware;
    memset(&firmware, 0, sizeof firmware);
    if (elf_read_firmware(elf, &firmware) != 0) {
        fprintf(stderr, "harness: cannot read %s\n", elf);
        return 2;
    }
    avr = avr_make_mcu_by_name("atmega328p");
    if (avr == NULL) {
        fprintf(stderr, "harness: simavr has no atmega328p\n");
        return 2;
    }
    avr_init(avr);
    avr->log = 0;
    avr_load_firmware(avr, &firmware);
    fflush(stdout);
    dup2(saved_stdout, STDOUT_FILENO);
    close(saved_stdout);
    avr->frequency = (uint32_t)F_CPU;
    avr->vcc = avr->avcc = avr->aref = 5000;
    avr->sleep = no_wait;
    core_reset = avr->reset;
    avr->reset = on_reset;

    uint32_t flags = 0;
    avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~(uint32_t)(AVR_UART_FLAG_STDIO | AVR_UART_FLAG_POLL_SLEEP);
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
    uart_irq = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), 0);
    avr_irq_register_notify(uart_irq + UART_IRQ_OUTPUT, on_uart_output, NULL);
    avr_irq_register_notify(uart_irq + UART_IRQ_OUT_XON, on_xon, NULL);
    avr_irq_register_notify(uart_irq + UART_IRQ_OUT_XOFF, on_xoff, NULL);

    pin_pedal = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('D'), 2);
    pin_estop = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('D'), 3);
    adc_irq = avr_io_getirq(avr, AVR_IOCTL_ADC_GETIRQ, 0);
    /* Register addresses of the ATmega328P: PORTB 0x25, DDRB 0x24, PORTD 0x2B, DDRD 0x2A, TCCR0A 0x44,
     * OCR0A 0x47. */
    watch(0x25, &portb);
    watch(0x24, &ddrb);
    watch(0x2B, &portd);
    watch(0x2A, &ddrd);
    watch(0x44, &tccr0a);
    watch(0x47, &ocr0a);

    if (!lockstep && open_port() < 0) {
        return 2;
    }
    drive_inputs();
    report_outputs();
    out("READY");
    int rc = lockstep ? run_lockstep() : run_realtime();
    avr_terminate(avr);
    return rc;
}
