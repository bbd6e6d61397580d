"""Deterministic mixed-text corpus for tokenizer parity tests: a hand list of edge cases + seeded random mixes."""

from __future__ import annotations

import random

# The five questions of the built-in bench suite `seed` (bench/suites/seed.json), verbatim.
SEED_QUESTIONS = (
    "请说出以下两句话区别在哪里？1、冬天：能穿多少穿多少 2、夏天：能穿多少穿多少",
    "请说出以下两句话区别在哪里？单身狗产生的原因有两个，一是谁都看不上，二是谁都看不上",
    "他知道我知道你知道他不知道吗？这句话里，到底谁不知道",
    "明明明明明白白白喜欢他，可她就是不说。这句话里，明明和白白谁喜欢谁？",
    "领导：你这是什么意思？小明：没什么意思。意思意思。领导：你这就不够意思了。小明：小意思，小意思。领导：你这人"
    '真有意思。小明：其实也没有别的意思。领导：那我就不好意思了。小明：是我不好意思。请问：以上"意思"分别是什么意思。',
)

# Texts of every model's special tokens: with special=False each must stay plain text.
SPECIAL_TEXTS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|extra_0|>",
    "<|extra_204|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<s>",
    "</s>",
    "<unk>",
    "<0x0A>",
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "[PAD151900]",
    "[PAD64800]",
    "[PAD100020]",
)

HAND = (
    SEED_QUESTIONS
    + SPECIAL_TEXTS
    + (
        "",
        " ",
        "  ",
        "\n",
        "\n\n\n",
        "\t",
        " \t \n ",
        "\r\n",
        "a",
        "A",
        "你",
        "你好",
        "你好，世界！",
        " 你好",
        "你好 ",
        "Hello world",
        " Hello world",
        "Hello world ",
        "  leading two",
        "trailing two  ",
        "a  b   c    d",
        "line one\nline two\n\nline four",
        "tab\tseparated\tvalues",
        "mixed \t\n whitespace \n\t end",
        "It's we're they've I'm he'll she'd IT'S WE'RE I'M",
        "don't\nDON'T",
        "O'Reilly's 'quoted' “curly” ‘single’",
        "naïve café résumé Zürich Ångström",
        "e\u0301 vs é (combining acute)",
        "ﬁ ligature, ｆｕｌｌ ｗｉｄｔｈ ＡＢＣ １２３",
        "全角标点：！？。，、；：“”‘’（）【】《》〈〉……——～",
        "半角标点: !?.,;:\"'()[]{}<>...--~",
        "1234567890",
        "3.14159265358979",
        "1,000,000.00",
        "0x1F 0b1010 1e-9",
        "2024年5月1日 12:30",
        "１２３４５",
        "①②③ Ⅻ ½ ² ٣٤٥ ๓",
        "😀😃😄",
        "👍🏽👋🏿",
        "👨‍👩‍👧‍👦 family",
        "🇨🇳🇺🇸",
        "❤️✨🤖🙏",
        "emoji😀in中文句子里🎉",
        "def f(x):\n    return x + 1\n",
        "if (a && b) {\n\tc();\n}",
        "for i in range(10):\n        print(i)",
        "#include <stdio.h>\nint main(void) { return 0; }",
        "x = {'a': [1, 2], \"b\": None}",
        "SELECT * FROM t WHERE id=1;",
        '<div class="a">内容</div>',
        "$ ls -la | grep '.py' > out.txt",
        "// 注释：这是代码\nconst 变量 = 1;",
        "https://example.com/path?q=中文&x=1#frag",
        "user@example.com",
        "C:\\Users\\name\\file.txt",
        "a->b => c",
        "こんにちは世界 カタカナ ひらがな",
        "안녕하세요 세계",
        "Привет, мир!",
        "Γειά σου Κόσμε",
        "مرحبا بالعالم",
        "שלום עולם",
        "नमस्ते दुनिया",
        "ภาษาไทย",
        "Tiếng Việt có dấu",
        "ſ long s: 'ſ 'S",
        "\u200bzero\u200bwidth\u200b",
        "nbsp\u00a0here",
        "ideographic\u3000space　　twice",
        "\x00\x01\x1f control",
        "\u2028line\u2029para",
        "\ufeffBOM",
        "▁ U+2581 ▁▁",
        "   \n   indented\n      more",
        "\n\n\n\n\n\n\n\n",
        " " * 40,
        "=" * 70,
        "-" * 33 + "\n" + "#" * 17,
        "Aesop isopropyl people jeopardy",
        "ø København Ærø ÿ þ ü û À Á",
        "xsop (sop) loop_sop eop_sop",
    )
)

POOLS = {
    "zh": (
        "你好",
        "世界",
        "请问",
        "区别在哪里",
        "冬天",
        "能穿多少穿多少",
        "单身狗",
        "明明",
        "白白",
        "意思意思",
        "不好意思",
        "中华人民共和国",
        "机器学习",
        "大语言模型",
        "的",
        "了",
        "吗",
        "呢",
        "我们",
        "量化",
        "推理速度",
        "内存",
    ),
    "en": (
        "Hello",
        "world",
        "The quick brown fox",
        "jumps",
        "don't",
        "it's",
        "I'LL",
        "we've",
        "model",
        "tokens",
        "quantization",
        "llama.cpp",
        "GGUF",
        "Qwen",
        "ChatGLM3",
        "DeepSeek",
        "naïve",
        "café",
        "U.S.A.",
        "e.g.",
    ),
    "num": ("0", "7", "42", "2024", "3.14", "1,000", "99999", "12345678901234567890", "１２３", "½", "①"),
    "emoji": ("😀", "👍🏽", "👨‍👩‍👧", "🇨🇳", "❤️", "✨", "🤖", "🙏", "🎉"),
    "code": ("def f(x):", "return x", "{", "}", "();", "i++", "x == y", "a[0]", "#!", "/* */", "::", "=>", "\\n"),
    "ws": (" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\t\t", "　", "\u00a0"),
    "punct": ("！", "？", "：", "；", "，", "。", "（", "）", "～", "、", "…", ".", ",", "!", "?", "'", '"', "-", "_"),
    "other": ("こんにちは", "안녕", "Привет", "Γειά", "مرحبا", "नमस्ते", "ไทย", "Việt"),
    "special": SPECIAL_TEXTS,
}
SEPARATORS = ("", "", " ", " ", "\n", "  ", "\t", "，")


def corpus(*, seed: int = 20240501, n_random: int = 420) -> list[str]:
    """HAND plus n_random seeded mixes of 1..9 fragments (with random leading/trailing whitespace)."""
    rng = random.Random(seed)
    names = sorted(POOLS)
    texts = list(HAND)
    for _ in range(n_random):
        parts = [rng.choice(POOLS[rng.choice(names)]) for _ in range(rng.randint(1, 9))]
        text = "".join(p + rng.choice(SEPARATORS) for p in parts)
        if rng.random() < 0.2:
            text = rng.choice(POOLS["ws"]) + text
        if rng.random() < 0.3:
            text = text.rstrip()
        texts.append(text)
    return texts
