package tidal.spark;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.fasterxml.jackson.core.exc.InputCoercionException;
import java.io.IOException;
import java.math.BigDecimal;
import java.util.Map;
import java.util.TreeMap;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.api.java.UDF1;

/**
 * The features job's fast path for one landing line (jobs/features/transforms.py, classify_events): a single pass of
 * Jackson's streaming parser over a line that is plainly a well-formed event, instead of Spark's variant functions,
 * which parse the line, then copy, cast and name the type of each field separately, row by row.
 *
 * <p>It returns the event's fields only for a line it can vouch for, and null for every other line, which then takes
 * the variant path as before. So it never decides a quarantine reason, and it must never accept a line the variant
 * path would read differently. It vouches for a line only when:
 * <ul>
 *   <li>the line starts with "{" and is exactly one JSON object (only whitespace after it), parsed by Jackson with
 *       its default features, which Spark's variant parser also uses (stricter limits on depth and number length,
 *       and duplicate keys refused at every level, as the variant builder refuses them), with no escaped UTF-16
 *       surrogate anywhere (the variant path reads a lone one as malformed);</li>
 *   <li>event_id, user_id, item_id and event_type are JSON strings;</li>
 *   <li>event_time is a string, or a number it reads exactly (below); value is absent, null, or such a number;</li>
 *   <li>context is absent, null, or an object it can write as Spark's to_json writes the variant (keys sorted,
 *       decimals without trailing zeros), which holds no string needing an escape, no exponent and no long number.</li>
 * </ul>
 *
 * <p>Numbers: an integer that fits a long is that long, as the variant stores it. A decimal number (digits and a
 * point, no exponent) of at most MAX_EXACT_NUMBER_CHARS characters has at most 15 significant digits, so its double
 * is the same however it is computed. Anything longer is left to the variant path.
 *
 * <p>benchmarks/features/classify_ab.py is the gate for any change here: the same rows as the variant path on
 * generated, bad and fuzzed lines, or it times nothing.
 */
public final class EventLineReader implements UDF1<String, Row> {
  private static final long serialVersionUID = 1L;

  /** Longer lines take the variant path (whose value has a 16 MiB limit): none of its limits can be near. */
  static final int MAX_LINE_CHARS = 64 * 1024;
  /** Deeper nesting takes the variant path, whose own limit is Jackson's default, far above this. */
  static final int MAX_DEPTH = 64;
  /** A number token longer than this takes the variant path (Jackson's own default limit is 1000). */
  static final int MAX_NUMBER_CHARS = 100;
  /** See the class comment: at most 15 significant digits, so the double is exact or the same nearest one. */
  static final int MAX_EXACT_NUMBER_CHARS = 15;

  private static final JsonFactory FACTORY = JsonFactory.builder()
      .enable(com.fasterxml.jackson.core.StreamReadFeature.STRICT_DUPLICATE_DETECTION)
      .streamReadConstraints(StreamReadConstraints.builder()
          .maxNestingDepth(MAX_DEPTH).maxNumberLength(MAX_NUMBER_CHARS).build())
      .build();

  /** Thrown inside the reader for a line it does not vouch for; never leaves call(). */
  private static final class NotPlain extends Exception {
    private static final long serialVersionUID = 1L;
    static final NotPlain INSTANCE = new NotPlain();

    private NotPlain() {
      super(null, null, false, false);
    }
  }

  /**
   * The line's fields as (event_id, user_id, item_id, event_type, value, time_text, time_seconds, context), or null
   * when the line is not one this reader vouches for.
   */
  @Override
  public Row call(String line) {
    if (line == null || line.isEmpty() || line.length() > MAX_LINE_CHARS || line.charAt(0) != '{'
        || line.indexOf('\uFFFD') >= 0 || hasEscapedSurrogate(line)) {
      return null;
    }
    try (JsonParser parser = FACTORY.createParser(line)) {
      return read(parser);
    } catch (IOException | NotPlain | RuntimeException e) {
      return null;
    }
  }

  /**
   * Whether the line holds a UTF-16 surrogate written as an escape ("\\ud800"): the variant path refuses a lone one
   * as malformed, anywhere in the line, so every line with one is left to it. (A surrogate that is not escaped can
   * only come from a valid 4-byte UTF-8 character, always a pair; invalid bytes are U+FFFD, refused above.)
   */
  static boolean hasEscapedSurrogate(String line) {
    for (int i = line.indexOf("\\u"); i >= 0 && i + 3 < line.length(); i = line.indexOf("\\u", i + 1)) {
      char first = line.charAt(i + 2), second = line.charAt(i + 3);
      if ((first == 'd' || first == 'D') && "89abcdefABCDEF".indexOf(second) >= 0) return true;
    }
    return false;
  }

  private static Row read(JsonParser p) throws IOException, NotPlain {
    String eventId = null, userId = null, itemId = null, eventType = null, timeText = null, context = null;
    Double value = null, timeSeconds = null;
    boolean seenTime = false;
    if (p.nextToken() != JsonToken.START_OBJECT) throw NotPlain.INSTANCE;
    while (p.nextToken() == JsonToken.FIELD_NAME) {
      String name = p.currentName();
      JsonToken token = p.nextToken();
      switch (name) {
        case "event_id": eventId = string(p, token); break;
        case "user_id": userId = string(p, token); break;
        case "item_id": itemId = string(p, token); break;
        case "event_type": eventType = string(p, token); break;
        case "value":
          value = token == JsonToken.VALUE_NULL ? null : exactNumber(p, token);
          break;
        case "event_time":
          seenTime = true;
          if (token == JsonToken.VALUE_STRING) timeText = p.getText();
          else timeSeconds = exactNumber(p, token);
          break;
        case "context":
          if (token == JsonToken.VALUE_NULL) context = "null";
          else if (token == JsonToken.START_OBJECT) context = canonicalObject(p);
          else throw NotPlain.INSTANCE;
          break;
        default:
          skipValue(p, token);
      }
    }
    // The object has ended; anything but the end of input after it (a second value, junk) is not plain.
    if (p.currentToken() != JsonToken.END_OBJECT || p.nextToken() != null) throw NotPlain.INSTANCE;
    if (eventId == null || userId == null || itemId == null || eventType == null || !seenTime) {
      throw NotPlain.INSTANCE;
    }
    return RowFactory.create(eventId, userId, itemId, eventType, value, timeText, timeSeconds, context);
  }

  private static String string(JsonParser p, JsonToken token) throws IOException, NotPlain {
    if (token != JsonToken.VALUE_STRING) throw NotPlain.INSTANCE;
    return p.getText();
  }

  /** A number the variant path reads to the same double: an integer that fits a long, or a short plain decimal. */
  private static double exactNumber(JsonParser p, JsonToken token) throws IOException, NotPlain {
    if (token == JsonToken.VALUE_NUMBER_INT) {
      try {
        return (double) p.getLongValue();
      } catch (InputCoercionException tooLarge) {
        throw NotPlain.INSTANCE;
      }
    }
    if (token == JsonToken.VALUE_NUMBER_FLOAT) {
      String text = p.getText();
      if (text.length() <= MAX_EXACT_NUMBER_CHARS && isPlainDecimal(text)) {
        // A decimal has no negative zero: the variant path reads "-0.0" as 0.0, so this must too.
        double parsed = Double.parseDouble(text);
        return parsed == 0.0 ? 0.0 : parsed;
      }
    }
    throw NotPlain.INSTANCE;
  }

  /** Digits, a sign and a point only: the form the variant stores as a decimal (no exponent). */
  private static boolean isPlainDecimal(String text) {
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      if (c != '-' && c != '.' && (c < '0' || c > '9')) return false;
    }
    return true;
  }

  /** Reads past one value, checking every number's length (the variant parser reads each one). */
  private static void skipValue(JsonParser p, JsonToken token) throws IOException, NotPlain {
    int depth = 0;
    do {
      if (token == null) throw NotPlain.INSTANCE;
      if (token.isStructStart()) depth++;
      else if (token.isStructEnd()) depth--;
      else if (token.isNumeric() && p.getTextLength() > MAX_NUMBER_CHARS) throw NotPlain.INSTANCE;
      if (depth == 0) return;
      token = p.nextToken();
    } while (true);
  }

  /** The object at the parser, as Spark's to_json writes the variant it would become (see canonicalValue). */
  private static String canonicalObject(JsonParser p) throws IOException, NotPlain {
    StringBuilder out = new StringBuilder();
    appendObject(p, out);
    return out.toString();
  }

  private static void appendObject(JsonParser p, StringBuilder out) throws IOException, NotPlain {
    // The variant sorts an object's fields by key (String.compareTo); duplicates were refused by the parser.
    TreeMap<String, String> fields = new TreeMap<>();
    while (p.nextToken() == JsonToken.FIELD_NAME) {
      String key = plainText(p.currentName());
      StringBuilder value = new StringBuilder();
      appendValue(p, p.nextToken(), value);
      fields.put(key, value.toString());
    }
    out.append('{');
    boolean first = true;
    for (Map.Entry<String, String> field : fields.entrySet()) {
      if (!first) out.append(',');
      first = false;
      out.append('"').append(field.getKey()).append("\":").append(field.getValue());
    }
    out.append('}');
  }

  /**
   * One value as the variant's to_json writes it: strings quoted (only ones that need no escape), integers that fit
   * a long as that long, plain decimals of at most MAX_EXACT_NUMBER_CHARS characters without trailing zeros (the
   * variant's decimal), booleans and null as they are. Anything else is not plain.
   */
  private static void appendValue(JsonParser p, JsonToken token, StringBuilder out) throws IOException, NotPlain {
    switch (token) {
      case START_OBJECT:
        appendObject(p, out);
        return;
      case START_ARRAY: {
        out.append('[');
        JsonToken element = p.nextToken();
        for (boolean first = true; element != JsonToken.END_ARRAY; element = p.nextToken(), first = false) {
          if (!first) out.append(',');
          appendValue(p, element, out);
        }
        out.append(']');
        return;
      }
      case VALUE_STRING:
        out.append('"').append(plainText(p.getText())).append('"');
        return;
      case VALUE_NUMBER_INT:
        try {
          out.append(p.getLongValue());
        } catch (InputCoercionException tooLarge) {
          throw NotPlain.INSTANCE;
        }
        return;
      case VALUE_NUMBER_FLOAT: {
        String text = p.getText();
        if (text.length() > MAX_EXACT_NUMBER_CHARS || !isPlainDecimal(text)) throw NotPlain.INSTANCE;
        out.append(new BigDecimal(text).stripTrailingZeros().toPlainString());
        return;
      }
      case VALUE_TRUE:
        out.append("true");
        return;
      case VALUE_FALSE:
        out.append("false");
        return;
      case VALUE_NULL:
        out.append("null");
        return;
      default:
        throw NotPlain.INSTANCE;
    }
  }

  /** A key or string that JSON writes as it is: no quote, backslash or control character (those get escapes). */
  private static String plainText(String text) throws NotPlain {
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      if (c < 0x20 || c == '"' || c == '\\') throw NotPlain.INSTANCE;
    }
    return text;
  }
}
