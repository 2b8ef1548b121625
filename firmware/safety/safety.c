/*
 * TOSCA safety board firmware, protocol 3 (version 3.1), for the ATmega328P of an Arduino Uno at 16 MHz.
 *
 * LASER_ENABLE = armed AND footpedal pressed AND E-stop released AND host watchdog fed.
 *
 * The decision is taken where the inputs change: the footpedal and E-stop external interrupts (INT0, INT1,
 * any logical change) and the 1 kHz timer tick (host watchdog countdown, re-sampling both pins). The main
 * loop only parses commands, formats replies, push lines and samples; whatever it is doing, an input edge
 * reaches the LASER_ENABLE pin within one interrupt latency. Every interrupt handler is short, so no handler
 * can hold another one back for long. The AVR hardware watchdog (250 ms) is fed only by the main loop: a hung
 * main loop resets the chip, and after any reset LASER_ENABLE is low (an output driven low first thing, and an
 * external pull-down while the pin is still an input) until the host arms again.
 *
 * See README.md in this directory for pins, timings and the protocol summary.
 */

#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/pgmspace.h>
#include <avr/sleep.h>
#include <avr/wdt.h>
#include <stdint.h>

#define VERSION_TEXT "3.1"

/* ------------------------------------------------------------------------------------------------ pins */
/* Footpedal: D2 = PD2 = INT0, switch to ground, internal pull-up: LOW = pressed (a cut wire reads released). */
#define PEDAL_BIT PD2
/* E-stop: D3 = PD3 = INT1, normally-closed contact to ground, internal pull-up: HIGH = pressed (a cut wire
 * reads pressed). */
#define ESTOP_BIT PD3
/* Smoothing motor PWM: D6 = PD6 = OC0A, Timer0 fast PWM, about 976 Hz. */
#define MOTOR_BIT PD6
/* Aiming beam: D7 = PD7, active high. */
#define AIM_BIT PD7
/* LASER_ENABLE: D8 = PB0, active high, 10 kOhm pull-down on the board. */
#define ENABLE_BIT PB0
/* Analog: A0 = ADC0 photodiode (0..5 V), A1 = ADC1 vibration envelope (1 V per g). */
#define ADC_PHOTODIODE 0
#define ADC_VIBRATION 1

#define PEDAL_PRESSED() ((PIND & _BV(PEDAL_BIT)) == 0)
#define ESTOP_PRESSED() ((PIND & _BV(ESTOP_BIT)) != 0)

/* ------------------------------------------------------------------------------------------ protocol */
#define WDT_DEFAULT_MS 1000
#define WDT_MIN_MS 100
#define WDT_MAX_MS 2000
#define PWM_MAX 153
#define STREAM_MIN_HZ 10
#define STREAM_MAX_HZ 200
#define LINE_MAX 64

enum { WDT_IDLE = 0, WDT_FED = 1, WDT_EXPIRED = 2 };

/* Push events: queued in order where they happen (mostly interrupts), sent by the main loop. A code is the
 * kind times two plus the level. */
#define EV_PEDAL 1
#define EV_ESTOP 2
#define EV_ENABLE 3
#define EV_WDT 4
#define EVQ_SIZE 32

/* ------------------------------------------------------------------- state shared with the interrupts */
static volatile uint8_t pedal;          /* last sampled footpedal (1 pressed) */
static volatile uint8_t estop;          /* last sampled E-stop (1 pressed) */
static volatile uint8_t armed;
static volatile uint8_t wdt_state;      /* WDT_IDLE, WDT_FED, WDT_EXPIRED */
static volatile uint16_t wdt_left_ms;   /* countdown while WDT_FED; expiry at 0 */
static volatile uint16_t wdt_timeout_ms = WDT_DEFAULT_MS;
static volatile uint8_t enable;         /* LASER_ENABLE as driven */
static volatile uint8_t evq[EVQ_SIZE];  /* push events waiting to be sent */
static volatile uint8_t evq_head;
static volatile uint8_t evq_tail;
static volatile uint8_t evq_lost;       /* the queue overflowed: resend the levels that differ */
static volatile uint8_t sample_due;     /* a stream sample is due */
static volatile uint32_t millis_count;  /* ms since reset */
static volatile uint8_t stream_hz;
static uint16_t stream_acc;             /* touched only by the timer interrupt */

/* Serial receive ring, filled by the USART interrupt. */
#define RX_SIZE 64
static volatile uint8_t rx_buf[RX_SIZE];
static volatile uint8_t rx_head;
static volatile uint8_t rx_tail;

/* Serial transmit ring, drained by the data-register-empty interrupt. */
#define TX_SIZE 128
static volatile uint8_t tx_buf[TX_SIZE];
static volatile uint8_t tx_head;
static volatile uint8_t tx_tail;

/* Reported levels: what the host was last told (main loop only). */
static uint8_t told_pedal;
static uint8_t told_estop;
static uint8_t told_enable;

/* Queue one push event. Interrupts must be off. */
static inline void push_event(uint8_t kind, uint8_t level)
{
    uint8_t next = (uint8_t)((evq_head + 1) & (EVQ_SIZE - 1));
    if (next == evq_tail) {
        evq_lost = 1;
        return;
    }
    evq[evq_head] = (uint8_t)(kind << 1 | level);
    evq_head = next;
}

/* Recompute LASER_ENABLE from the state and drive the pin. Interrupts must be off (an ISR, or cli()). */
static inline void apply_enable(void)
{
    uint8_t on = armed && pedal && !estop && wdt_state == WDT_FED;
    if (on) {
        PORTB |= _BV(ENABLE_BIT);
    } else {
        PORTB &= (uint8_t)~_BV(ENABLE_BIT);
    }
    if (on != enable) {
        enable = on;
        push_event(EV_ENABLE, on);
    }
}

static inline void motor_stop(void)
{
    TCCR0A &= (uint8_t)~(_BV(COM0A1) | _BV(COM0A0));
    OCR0A = 0;
    PORTD &= (uint8_t)~_BV(MOTOR_BIT);
}

static inline void motor_set(uint8_t pwm)
{
    if (pwm == 0) {
        motor_stop();
        return;
    }
    OCR0A = pwm;
    TCCR0A |= _BV(COM0A1);
}

static inline void sample_inputs(void)
{
    uint8_t p = PEDAL_PRESSED() ? 1 : 0;
    uint8_t e = ESTOP_PRESSED() ? 1 : 0;
    if (p != pedal) {
        pedal = p;
        push_event(EV_PEDAL, p);
    }
    if (e != estop) {
        estop = e;
        push_event(EV_ESTOP, e);
        if (e) {
            armed = 0; /* pressing the E-stop disarms: releasing it never re-enables by itself */
        }
    }
}

/* Footpedal and E-stop edges. The vectors are naked: their first two instructions test the pin and clear
 * LASER_ENABLE (neither touches a register or SREG), and only then jump to the handler that saves registers and
 * does the bookkeeping. A release or a press therefore drops the output about 10 cycles after the interrupt is
 * taken, instead of after the 15 register saves of an ordinary handler. */
void pedal_edge(void) __attribute__((signal, used));
void estop_edge(void) __attribute__((signal, used));

ISR(INT0_vect, ISR_NAKED)
{
    /* PIND bit set = pedal released: clear PORTB's LASER_ENABLE bit. */
    __asm__ __volatile__("sbic %[pin], %[pedal]\n\t"
                         "cbi %[port], %[enable]\n\t"
                         "jmp pedal_edge\n\t" ::[pin] "I"(_SFR_IO_ADDR(PIND)),
                         [pedal] "I"(PEDAL_BIT), [port] "I"(_SFR_IO_ADDR(PORTB)), [enable] "I"(ENABLE_BIT));
}

ISR(INT1_vect, ISR_NAKED)
{
    /* PIND bit set = E-stop pressed (its normally-closed contact is open). */
    __asm__ __volatile__("sbic %[pin], %[estop]\n\t"
                         "cbi %[port], %[enable]\n\t"
                         "jmp estop_edge\n\t" ::[pin] "I"(_SFR_IO_ADDR(PIND)),
                         [estop] "I"(ESTOP_BIT), [port] "I"(_SFR_IO_ADDR(PORTB)), [enable] "I"(ENABLE_BIT));
}

void pedal_edge(void)
{
    sample_inputs();
    apply_enable();
}

void estop_edge(void)
{
    sample_inputs();
    apply_enable();
}

/* 1 kHz tick (Timer2 compare A): time, host watchdog, stream pacing, and a second look at both inputs. */
ISR(TIMER2_COMPA_vect)
{
    millis_count++;
    if (wdt_state == WDT_FED && --wdt_left_ms == 0) {
        wdt_state = WDT_EXPIRED;
        armed = 0;
        motor_stop();
        apply_enable();
        push_event(EV_WDT, 1);
    }
    sample_inputs();
    apply_enable();
    if (stream_hz) {
        stream_acc += stream_hz;
        if (stream_acc >= 1000) {
            stream_acc -= 1000;
            sample_due = 1;
        }
    }
}

ISR(USART_RX_vect)
{
    uint8_t status = UCSR0A;
    uint8_t byte = UDR0;
    uint8_t next = (uint8_t)((rx_head + 1) & (RX_SIZE - 1));
    if (status & (_BV(FE0) | _BV(DOR0))) {
        return; /* a damaged byte is dropped like any other non-printable byte */
    }
    if (next != rx_tail) {
        rx_buf[rx_head] = byte;
        rx_head = next;
    }
}

ISR(USART_UDRE_vect)
{
    if (tx_head == tx_tail) {
        UCSR0B &= (uint8_t)~_BV(UDRIE0);
        return;
    }
    UDR0 = tx_buf[tx_tail];
    tx_tail = (uint8_t)((tx_tail + 1) & (TX_SIZE - 1));
}

/* ---------------------------------------------------------------------------------------------- output */
static void put(uint8_t c)
{
    uint8_t next = (uint8_t)((tx_head + 1) & (TX_SIZE - 1));
    while (next == tx_tail) {
        /* Full: the interrupt drains it at line rate (at most 11 ms for the whole ring). */
    }
    tx_buf[tx_head] = c;
    tx_head = next;
    UCSR0B |= _BV(UDRIE0);
}

static void put_P(const char *text)
{
    char c;
    while ((c = (char)pgm_read_byte(text++)) != 0) {
        put((uint8_t)c);
    }
}

static void put_uint(uint32_t value)
{
    char digits[10];
    uint8_t n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n) {
        put((uint8_t)digits[--n]);
    }
}

/* milli-units as "<int>.<three decimals>" */
static void put_milli(uint16_t milli)
{
    put_uint(milli / 1000);
    put('.');
    uint16_t frac = milli % 1000;
    put((uint8_t)('0' + frac / 100));
    put((uint8_t)('0' + (frac / 10) % 10));
    put((uint8_t)('0' + frac % 10));
}

static void end_line(void) { put('\n'); }

static void line_P(const char *text)
{
    put_P(text);
    end_line();
}

/* -------------------------------------------------------------------------------------------- analog */
static uint16_t adc_read(uint8_t channel)
{
    ADMUX = (uint8_t)(_BV(REFS0) | channel); /* AVcc reference */
    ADCSRA |= _BV(ADSC);
    while (ADCSRA & _BV(ADSC)) {
    }
    return ADC;
}

/* ADC code (10 bits on 0..5 V) -> millivolts, rounded. */
static uint16_t adc_millivolts(uint8_t channel)
{
    uint32_t code = adc_read(channel);
    return (uint16_t)((code * 5000UL + 511) / 1023);
}

/* ----------------------------------------------------------------------------------------- push lines */
static void send_sample(void)
{
    cli();
    uint32_t ms = millis_count;
    sei();
    uint16_t pd = adc_millivolts(ADC_PHOTODIODE);
    uint16_t vib = adc_millivolts(ADC_VIBRATION);
    put_P(PSTR("S:"));
    put_uint(ms);
    put(',');
    put_milli(pd);
    put(',');
    put((uint8_t)('0' + pedal));
    put(',');
    put((uint8_t)('0' + estop));
    put(',');
    put_milli(vib);
    put(',');
    put((uint8_t)('0' + enable));
    end_line();
}

static void send_event(uint8_t code)
{
    uint8_t kind = code >> 1;
    uint8_t level = code & 1;
    if (kind == EV_PEDAL) {
        put_P(PSTR("EVT:FOOTPEDAL:"));
        told_pedal = level;
    } else if (kind == EV_ESTOP) {
        put_P(PSTR("EVT:ESTOP:"));
        told_estop = level;
    } else if (kind == EV_ENABLE) {
        put_P(PSTR("EVT:ENABLE:"));
        told_enable = level;
    } else {
        put_P(PSTR("EVT:WDT:"));
    }
    put((uint8_t)('0' + level));
    end_line();
}

/* Send the queued push events in the order they happened, then a due sample. */
static void flush_events(void)
{
    for (;;) {
        uint8_t code, lost, p, e, en;
        /* Inputs that change faster than the line can report keep this loop going; every line sent is
         * progress. */
        wdt_reset();
        cli();
        if (evq_tail != evq_head) {
            code = evq[evq_tail];
            evq_tail = (uint8_t)((evq_tail + 1) & (EVQ_SIZE - 1));
            sei();
            send_event(code);
            continue;
        }
        lost = evq_lost;
        evq_lost = 0;
        p = pedal;
        e = estop;
        en = enable;
        sei();
        if (lost) {
            /* More changes than the queue holds: at least the present levels reach the host. */
            if (p != told_pedal) send_event((uint8_t)(EV_PEDAL << 1 | p));
            if (e != told_estop) send_event((uint8_t)(EV_ESTOP << 1 | e));
            if (en != told_enable) send_event((uint8_t)(EV_ENABLE << 1 | en));
        }
        break;
    }
    if (sample_due) {
        sample_due = 0;
        send_sample();
    }
}

/* ------------------------------------------------------------------------------------------- commands */
static char line[LINE_MAX + 1];
static uint8_t line_len;
static uint8_t line_overlong;

/* "<digits>" -> value (saturating at 65535); 0 when the text is empty or not all digits. */
static uint8_t parse_uint(const char *text, uint16_t *out)
{
    uint32_t value = 0;
    if (*text == 0) {
        return 0;
    }
    for (; *text; text++) {
        if (*text < '0' || *text > '9') {
            return 0;
        }
        value = value * 10 + (uint8_t)(*text - '0');
        if (value > 65535UL) {
            value = 65535UL;
        }
    }
    *out = (uint16_t)value;
    return 1;
}

/* line starts with the program-memory prefix; returns the rest or 0. */
static const char *after_P(const char *text, const char *prefix)
{
    char c;
    while ((c = (char)pgm_read_byte(prefix++)) != 0) {
        if (*text++ != c) {
            return 0;
        }
    }
    return text;
}

static uint8_t is_P(const char *text, const char *word)
{
    const char *rest = after_P(text, word);
    return rest != 0 && *rest == 0;
}

static void reply_flag(const char *name, uint8_t value)
{
    put_P(name);
    put((uint8_t)('0' + value));
    end_line();
}

static void unknown(const char *cmd)
{
    put_P(PSTR("ERROR:UNKNOWN_COMMAND:"));
    while (*cmd) {
        put((uint8_t)*cmd++);
    }
    end_line();
}

static void handle_line(char *cmd)
{
    const char *arg;
    uint16_t value;

#ifdef TEST_HANG
    /* Test build only: a command that hangs the main loop, to show the hardware watchdog resetting the chip. */
    if (is_P(cmd, PSTR("HANG"))) {
        for (;;) {
        }
    }
#endif
    if (is_P(cmd, PSTR("WDT_RESET"))) {
        cli();
        if (wdt_state != WDT_EXPIRED) {
            wdt_state = WDT_FED;
            wdt_left_ms = wdt_timeout_ms;
            apply_enable();
        }
        sei();
        line_P(PSTR("OK:WDT_RESET"));
    } else if (is_P(cmd, PSTR("GET_PHOTODIODE"))) {
        put_P(PSTR("PHOTODIODE:"));
        put_milli(adc_millivolts(ADC_PHOTODIODE));
        end_line();
    } else if (is_P(cmd, PSTR("GET_FOOTPEDAL"))) {
        reply_flag(PSTR("FOOTPEDAL:"), pedal);
    } else if (is_P(cmd, PSTR("GET_VIBRATION_LEVEL"))) {
        put_P(PSTR("VIBRATION:"));
        put_milli(adc_millivolts(ADC_VIBRATION));
        end_line();
    } else if (is_P(cmd, PSTR("GET_ESTOP"))) {
        reply_flag(PSTR("ESTOP:"), estop);
    } else if (is_P(cmd, PSTR("MOTOR_OFF"))) {
        cli();
        motor_stop();
        sei();
        line_P(PSTR("OK:MOTOR_OFF"));
    } else if (is_P(cmd, PSTR("LASER_ON"))) {
        PORTD |= _BV(AIM_BIT);
        line_P(PSTR("OK:LASER_ON"));
    } else if (is_P(cmd, PSTR("LASER_OFF"))) {
        PORTD &= (uint8_t)~_BV(AIM_BIT);
        line_P(PSTR("OK:LASER_OFF"));
    } else if (is_P(cmd, PSTR("VERSION?"))) {
        line_P(PSTR("VERSION:" VERSION_TEXT));
    } else if (is_P(cmd, PSTR("ARM"))) {
        uint8_t refused;
        cli();
        refused = estop ? 1 : (wdt_state == WDT_EXPIRED ? 2 : 0);
        if (!refused) {
            armed = 1;
            apply_enable();
        }
        sei();
        if (refused == 1) {
            line_P(PSTR("ERROR:NOT_READY:ESTOP"));
        } else if (refused == 2) {
            line_P(PSTR("ERROR:NOT_READY:WDT"));
        } else {
            line_P(PSTR("OK:ARM"));
        }
    } else if (is_P(cmd, PSTR("DISARM"))) {
        cli();
        armed = 0;
        apply_enable();
        sei();
        line_P(PSTR("OK:DISARM"));
    } else if (is_P(cmd, PSTR("WDT_CLEAR"))) {
        cli();
        if (wdt_state == WDT_EXPIRED) {
            wdt_state = WDT_FED;
            wdt_left_ms = wdt_timeout_ms;
        }
        sei();
        line_P(PSTR("OK:WDT_CLEAR"));
    } else if (is_P(cmd, PSTR("STATUS?"))) {
        uint8_t a, w;
        cli();
        a = armed;
        w = wdt_state;
        sei();
        put_P(PSTR("STATUS:ARMED="));
        put((uint8_t)('0' + a));
        if (w == WDT_EXPIRED) {
            line_P(PSTR(",WDT=EXPIRED"));
        } else if (w == WDT_FED) {
            line_P(PSTR(",WDT=FED"));
        } else {
            line_P(PSTR(",WDT=IDLE"));
        }
    } else if ((arg = after_P(cmd, PSTR("MOTOR_SPEED:"))) != 0 && parse_uint(arg, &value)) {
        uint8_t pwm = value > PWM_MAX ? PWM_MAX : (uint8_t)value;
        if (value > PWM_MAX) {
            line_P(PSTR("WARNING:PWM_CLAMPED_TO_MAX"));
        }
        cli();
        motor_set(pwm);
        sei();
        put_P(PSTR("OK:MOTOR_SPEED:"));
        put_uint(pwm);
        end_line();
    } else if ((arg = after_P(cmd, PSTR("WDT_TIMEOUT:"))) != 0 && parse_uint(arg, &value) &&
               value >= WDT_MIN_MS && value <= WDT_MAX_MS) {
        cli();
        if (wdt_state == WDT_FED) {
            /* The deadline stays counted from the last WDT_RESET, with the new length; if that is already past,
             * the watchdog expires at the next tick. */
            uint16_t elapsed = (uint16_t)(wdt_timeout_ms - wdt_left_ms);
            wdt_left_ms = elapsed >= value ? 1 : (uint16_t)(value - elapsed);
        }
        wdt_timeout_ms = value;
        sei();
        put_P(PSTR("OK:WDT_TIMEOUT:"));
        put_uint(value);
        end_line();
    } else if ((arg = after_P(cmd, PSTR("STREAM:"))) != 0 && parse_uint(arg, &value) &&
               (value == 0 || (value >= STREAM_MIN_HZ && value <= STREAM_MAX_HZ))) {
        cli();
        stream_hz = (uint8_t)value;
        stream_acc = 0;
        sample_due = 0;
        sei();
        put_P(PSTR("OK:STREAM:"));
        put_uint(value);
        end_line();
    } else {
        unknown(cmd);
    }
}

/* One received byte: printable ASCII builds the line, LF ends it, everything else is ignored. */
static void receive(uint8_t byte)
{
    if (byte == '\n') {
        if (line_overlong) {
            line_overlong = 0;
            line_len = 0;
            line_P(PSTR("ERROR:LINE_TOO_LONG"));
            return;
        }
        /* Trim surrounding spaces. */
        uint8_t start = 0;
        uint8_t end = line_len;
        while (start < end && line[start] == ' ') {
            start++;
        }
        while (end > start && line[end - 1] == ' ') {
            end--;
        }
        line[end] = 0;
        line_len = 0;
        handle_line(line + start);
        return;
    }
    if (byte < 0x20 || byte > 0x7e) {
        return;
    }
    if (line_overlong) {
        return;
    }
    if (line_len >= LINE_MAX) {
        line_overlong = 1;
        return;
    }
    line[line_len++] = (char)byte;
}

/* ------------------------------------------------------------------------------------------------ setup */
/* Runs before main and before .data/.bss are set up: the hardware watchdog stays enabled across its own reset,
 * so it is re-armed at once, and the reset cause is kept. */
uint8_t reset_cause __attribute__((section(".noinit")));

void early_init(void) __attribute__((naked, used, section(".init3")));
void early_init(void)
{
    /* LASER_ENABLE driven low before anything else. */
    PORTB &= (uint8_t)~_BV(ENABLE_BIT);
    DDRB |= _BV(ENABLE_BIT);
    reset_cause = MCUSR;
    MCUSR = 0;
    wdt_enable(WDTO_250MS);
}

static void setup(void)
{
    /* Outputs low: motor, aiming beam. Inputs with pull-ups: pedal, E-stop. */
    PORTD = (uint8_t)(_BV(PEDAL_BIT) | _BV(ESTOP_BIT));
    DDRD = (uint8_t)(_BV(MOTOR_BIT) | _BV(AIM_BIT));

    /* USART0: 115200 8N1, double speed (UBRR 16: 117647 baud, +2.1 %). */
    UCSR0A = _BV(U2X0);
    UBRR0H = 0;
    UBRR0L = 16;
    UCSR0C = (uint8_t)(_BV(UCSZ01) | _BV(UCSZ00));
    UCSR0B = (uint8_t)(_BV(RXEN0) | _BV(TXEN0) | _BV(RXCIE0));

    /* Timer0: fast PWM on OC0A (motor), prescaler 64 -> 976.6 Hz; output disconnected until a speed is set. */
    TCCR0A = (uint8_t)(_BV(WGM01) | _BV(WGM00));
    TCCR0B = (uint8_t)(_BV(CS01) | _BV(CS00));
    OCR0A = 0;

    /* Timer2: CTC, prescaler 64, OCR2A 249 -> exactly 1 kHz. */
    TCCR2A = _BV(WGM21);
    TCCR2B = _BV(CS22);
    OCR2A = 249;
    TIMSK2 = _BV(OCIE2A);

    /* ADC: AVcc reference, prescaler 128 -> 125 kHz ADC clock, one conversion 104 us. */
    ADMUX = _BV(REFS0);
    ADCSRA = (uint8_t)(_BV(ADEN) | _BV(ADPS2) | _BV(ADPS1) | _BV(ADPS0));

    /* INT0 (pedal) and INT1 (E-stop): any logical change. */
    EICRA = (uint8_t)(_BV(ISC10) | _BV(ISC00));
    EIFR = (uint8_t)(_BV(INTF1) | _BV(INTF0));
    EIMSK = (uint8_t)(_BV(INT1) | _BV(INT0));

    set_sleep_mode(SLEEP_MODE_IDLE);

    /* Start from the pins' present levels; the host has been told nothing yet. */
    pedal = PEDAL_PRESSED() ? 1 : 0;
    estop = ESTOP_PRESSED() ? 1 : 0;
    told_pedal = pedal;
    told_estop = estop;
    told_enable = 0;
}

int main(void)
{
    setup();
    sei();
    if (reset_cause & _BV(WDRF)) {
        /* The chip was reset by its own watchdog: LASER_ENABLE may have been high before, say it is low. */
        line_P(PSTR("EVT:ENABLE:0"));
    }
    for (;;) {
        wdt_reset();
        while (rx_tail != rx_head) {
            /* A line that never goes quiet keeps this loop busy: each byte handled is progress, so it feeds the
             * hardware watchdog too. */
            wdt_reset();
            uint8_t byte = rx_buf[rx_tail];
            rx_tail = (uint8_t)((rx_tail + 1) & (RX_SIZE - 1));
            receive(byte);
            flush_events();
        }
        flush_events();
        /* Idle until the next interrupt (a received byte, an input edge, the 1 kHz tick) when there is
         * nothing to do. Interrupts are enabled by the instruction just before SLEEP, so one arriving after
         * the check still wakes the loop. */
        cli();
        if (rx_tail == rx_head && evq_tail == evq_head && !evq_lost && !sample_due) {
            sleep_enable();
            sei();
            sleep_cpu();
            sleep_disable();
        }
        sei();
    }
}
